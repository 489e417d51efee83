# lightdeploy with OpenVINO (CPU): export, parity, bench and run OpenVINO artifacts.
#   docker build -f docker/openvino.Dockerfile -t lightdeploy:openvino .
#   docker run -v "$PWD/artifacts:/work/artifacts" lightdeploy:openvino export shufflenetv2 --to openvino
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# libgomp: OpenMP runtime used by torch and OpenVINO's CPU plugin.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/lightdeploy
COPY pyproject.toml README.md* ./
COPY lightdeploy ./lightdeploy
COPY exporters ./exporters
COPY runtimes ./runtimes

# torch pinned as in pyproject, from the CPU wheel index (PyPI's Linux wheel pulls the CUDA stack).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install ".[openvino]" \
 && pip check \
 && lightdeploy --help

WORKDIR /work
ENTRYPOINT ["lightdeploy"]
CMD ["--help"]
