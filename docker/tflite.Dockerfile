# Runtime-only image for TFLite artifacts: numpy + Pillow + LiteRT (ai-edge-litert), no torch.
# It runs `lightdeploy.runtimes` (load, infer, predict) and `lightdeploy predict` on artifacts exported
# elsewhere:
#   docker build -f docker/tflite.Dockerfile -t lightdeploy:tflite-runtime .
#   docker run -v "$PWD/artifacts:/artifacts" lightdeploy:tflite-runtime \
#     predict /artifacts/shufflenetv2-tflite-fp32 /artifacts/cat.jpg --out /artifacts/predictions
# The `tflite-runtime` extra is lightdeploy's core (numpy, Pillow, the CLI) plus the LiteRT interpreter;
# torch comes only with the `export` extra, so none is installed here (checked at build).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/lightdeploy
COPY pyproject.toml README.md* ./
COPY lightdeploy ./lightdeploy
COPY exporters ./exporters
COPY runtimes ./runtimes

RUN pip install ".[tflite-runtime]" \
 && pip check \
 && python -c "import lightdeploy.runtimes, ai_edge_litert.interpreter; print('lightdeploy.runtimes ready')" \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && lightdeploy --help

WORKDIR /work
ENTRYPOINT ["lightdeploy"]
CMD ["--help"]
