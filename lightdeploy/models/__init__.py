"""The model zoo: one file per family, each registering its models; ``registry`` is the way in.

The registry loads the families on first use (``registry.BUILTIN_FAMILIES``), so importing this
package costs nothing.
"""

from lightdeploy.models.registry import ModelSpec, get_spec, list_models, register_model

__all__ = ["ModelSpec", "get_spec", "list_models", "register_model"]
