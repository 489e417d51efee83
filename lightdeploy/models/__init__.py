"""The model zoo: importing this package registers every family (one file each).

Import order is listing order: backbones, then detectors, then segmenters.
"""

from lightdeploy.models import bisenet, dfanet, lighthead_rcnn, mobilenetv2, shufflenetv2, snet, thundernet  # noqa: F401  (backbones)  # noqa: F401  (detectors)  # noqa: F401  (segmenters)
from lightdeploy.models.registry import ModelSpec, get_spec, list_models, register_model

__all__ = ["ModelSpec", "get_spec", "list_models", "register_model"]
