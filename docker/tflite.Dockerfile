# Runtime-only image for TFLite artifacts: numpy + Pillow + LiteRT (ai-edge-litert), no torch.
# It runs `lightdeploy.runtimes` (load, infer, predict) on artifacts exported elsewhere:
#   docker build -f docker/tflite.Dockerfile -t lightdeploy:tflite-runtime .
#   docker run -v "$PWD/artifacts:/artifacts" lightdeploy:tflite-runtime \
#     python -c "from lightdeploy import runtimes; print(runtimes.load('/artifacts/shufflenetv2-tflite-fp32').predict('/artifacts/cat.jpg'))"
# lightdeploy's core depends on torch (export and parity need it), so the package is installed with
# --no-deps and only what `lightdeploy.runtimes` imports is added: numpy, Pillow and the LiteRT
# interpreter pinned as in the `tflite` extra.  The CLI (typer, torch) is not in this image.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/lightdeploy
COPY pyproject.toml README.md* ./
COPY lightdeploy ./lightdeploy
COPY exporters ./exporters
COPY runtimes ./runtimes

RUN pip install --no-deps . \
 && pip install "numpy>=1.26" "pillow>=10" "ai-edge-litert==2.3.0" \
 && python -c "import lightdeploy.runtimes, ai_edge_litert.interpreter; print('lightdeploy.runtimes ready')" \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

WORKDIR /work
CMD ["python", "-c", "import lightdeploy.runtimes as r; print('backends:', sorted(r.BACKENDS))"]
