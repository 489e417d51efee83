# The README's two commands.  Each creates .venv if it is missing and installs what it needs, so both
# work on a fresh clone.  torch==2.13.0 is pinned in pyproject (a CPU wheel on these machines).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-cpu-dev
OUT ?= artifacts

.PHONY: demo test test-all install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when pyproject changes (new extras or pins).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job: export to every CPU backend with the parity gate (exit 1 if any artifact diverges).
demo: $(STAMP)
	$(BIN)/lightdeploy export shufflenetv2 --to onnx --to openvino --to tflite --out $(OUT)
	$(BIN)/lightdeploy export thundernet --to onnx --to openvino --to tflite --out $(OUT)
	$(BIN)/lightdeploy predict $(OUT)/thundernet-onnx-fp32 tests/data/astronaut.jpg --out $(OUT)/predictions

# The CI gate: lint and format check, then every test but the `slow` set (INT8 calibration of the big
# models, extra sizes).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow" --junitxml=reports/junit.xml

# Everything, slow set included (about an hour on 2 cores).
test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --junitxml=reports/junit-all.xml

clean:
	rm -rf $(VENV) $(OUT) reports .pytest_cache
