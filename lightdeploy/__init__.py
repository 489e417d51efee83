"""lightdeploy: lightweight vision models from PyTorch to the edge, with parity proven against eager.

Importing ``lightdeploy`` is cheap and torch-free, because ``lightdeploy.runtimes`` (embedded in edge
apps without torch) lives inside this package; ``create_model`` and ``list_models`` load the model
zoo (and torch) on first use.
"""

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]


def __getattr__(name: str):
    if name == "create_model":
        from lightdeploy.factory import create_model

        return create_model
    if name == "list_models":
        from lightdeploy.models.registry import list_models

        return list_models
    raise AttributeError(f"module 'lightdeploy' has no attribute {name!r}")
