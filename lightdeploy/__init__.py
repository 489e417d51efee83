"""lightdeploy: lightweight vision models from PyTorch to the edge, with parity proven against eager.

Importing ``lightdeploy`` is cheap and torch-free, because ``lightdeploy.runtimes`` (embedded in edge
apps without torch) lives inside this package; the names below load the model zoo (and torch) on
first use.

- ``create_model(name)``, ``list_models()``: the registered models.
- ``export_module(module_or_factory, task=..., input_size=..., name=...)``: your own model through the
  same export pipeline and parity gate as ``lightdeploy export``.
- ``register_model(ModelSpec(...))``: add a model family (or from another package: the
  ``lightdeploy.models`` entry point, ``lightdeploy.models.registry``).
"""

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "export_module", "register_model", "ModelSpec", "__version__"]

# public name -> (module, attribute), imported on first use
_LAZY = {
    "create_model": ("lightdeploy.factory", "create_model"),
    "list_models": ("lightdeploy.models.registry", "list_models"),
    "export_module": ("lightdeploy.pipeline", "export_module"),
    "register_model": ("lightdeploy.models.registry", "register_model"),
    "ModelSpec": ("lightdeploy.models.registry", "ModelSpec"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'lightdeploy' has no attribute {name!r}")
