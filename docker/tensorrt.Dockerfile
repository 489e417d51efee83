# lightdeploy with TensorRT 10: build plans into engines (`lightdeploy build DIR`), export with the engine
# built right away, and run engines.  Needs an NVIDIA GPU at run time:
#   docker build -f docker/tensorrt.Dockerfile -t lightdeploy:trt .
#   docker run --gpus all -v "$PWD/artifacts:/artifacts" lightdeploy:trt build /artifacts/thundernet-trt-fp16
# The NGC TensorRT image ships CUDA, TensorRT 10 (Python bindings and trtexec) and its plugins; its
# tensorrt wheel satisfies the `trt` extra (tensorrt>=10,<11), so pip does not fetch another one.
ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3
FROM ${TRT_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/lightdeploy
COPY pyproject.toml README.md* ./
COPY lightdeploy ./lightdeploy
COPY exporters ./exporters
COPY runtimes ./runtimes

# torch (the eager side of export and parity) is pinned as in pyproject; its CPU wheel is enough here
# (TensorRT does the GPU work) and avoids a second multi-GB CUDA stack.  Then the `trt` extra, with
# NVIDIA's index for the TensorRT and cuda-python wheels.
RUN python3 -m pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && python3 -m pip install ".[trt]" --extra-index-url https://pypi.nvidia.com \
 && python3 -m pip check \
 && lightdeploy --help

WORKDIR /work
ENTRYPOINT ["lightdeploy"]
CMD ["--help"]
