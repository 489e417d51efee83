"""The model zoo: importing this package registers every family (one file each).

Import order is listing order: backbones, then detectors, then segmenters.
"""

from lightdeploy.models import mobilenetv2, shufflenetv2, snet  # noqa: F401  (backbones)
from lightdeploy.models import thundernet, lighthead_rcnn  # noqa: F401  (detectors)
from lightdeploy.models import bisenet, dfanet  # noqa: F401  (segmenters)
from lightdeploy.models.registry import ModelSpec, get_spec, list_models, register_model

__all__ = ["ModelSpec", "get_spec", "list_models", "register_model"]
