# The README's two commands.  Each creates .venv if it is missing and installs what it needs, so both
# work on a fresh clone.  torch==2.13.0 is pinned in pyproject (a CPU wheel on these machines).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-cpu-dev
OUT ?= artifacts

.PHONY: demo test install clean

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
	$(BIN)/lightdeploy export shufflenetv2 --to onnx --out $(OUT)
	$(BIN)/lightdeploy info $(OUT)/shufflenetv2-onnx-fp32

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --junitxml=reports/junit.xml

clean:
	rm -rf $(VENV) $(OUT) reports .pytest_cache
