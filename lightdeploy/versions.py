"""lightdeploy's own version and the installed versions of the packages an artifact was made with.

Torch-free and dependency-free, so every layer (the runtimes too) may use it.
"""

from __future__ import annotations

from importlib import metadata

__version__ = "0.1.0"

# The packages whose versions decide what an export produces (recorded in the manifest).
TOOLCHAIN = (
    "torch",
    "onnx",
    "onnxscript",
    "onnxsim",
    "onnxruntime",
    "openvino",
    "nncf",
    "litert-torch",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "tensorrt",
)


def package_version(package: str) -> str | None:
    """The installed version of ``package`` (a distribution name), or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def installed_versions(packages=TOOLCHAIN) -> dict[str, str]:
    """{package: version} of the installed ones among ``packages``."""
    found = {p: package_version(p) for p in packages}
    return {p: v for p, v in found.items() if v is not None}
