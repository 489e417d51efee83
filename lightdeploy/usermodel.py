"""Your own model: an ``nn.Module`` (or a factory that builds one) checked against its task's output
contract (``contract.py``), described by a ``ModelSpec`` that is not registered, and never modified:
lightdeploy exports an eval-mode copy.

``from_module`` / ``from_factory`` make the ``UserModel`` the export pipeline takes; its ``source`` goes
into the manifest, so that ``rebuild`` can make the eager model again for ``lightdeploy parity DIR``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lightdeploy import contract, references
from lightdeploy.errors import UsageError
from lightdeploy.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

PREPROCESS_KEYS = ("mean", "std", "channel_order")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class UserModel:
    """A user's model ready for the export pipeline: its spec, the manifest's ``source``, and the
    module itself (left as it was given)."""

    module: nn.Module
    spec: ModelSpec
    source: dict

    def deployable(self) -> nn.Module:
        """The module that is exported and compared: an eval-mode copy (with dict outputs as a tuple)."""
        return wrap_outputs(copy.deepcopy(self.module).eval(), self.source)


class DictOutputs(nn.Module):
    """A model that returns a dict, as one that returns the contract's tuple (exporters name outputs
    by position)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, x):
        result = self.model(x)
        return tuple(result[name] for name in self.names)


def wrap_outputs(model: nn.Module, source: dict) -> nn.Module:
    """``model`` as it was exported: wrapped when it returns a dict (``source["returns"]``)."""
    return DictOutputs(model, source["output_names"]).eval() if source.get("returns") == "dict" else model


# ------------------------------------------------------------------------------------------ building
def from_module(
    module: nn.Module,
    *,
    task: str,
    input_size,
    name: str,
    class_names=None,
    num_classes: int | None = None,
    preprocess: dict | None = None,
    outputs=None,
    size_multiple: int = 1,
    source: dict | None = None,
) -> UserModel:
    """Check ``module`` against ``task``'s contract (one forward of an eval-mode copy) and describe it.

    ``source``: how to build it again (a factory's reference, its arguments, weights); without one
    the manifest records the class only and ``lightdeploy parity DIR`` cannot rebuild it.
    """
    if not isinstance(module, nn.Module):
        raise UsageError(f"export_module takes a torch.nn.Module; got {type(module).__name__}.")
    if task not in contract.TASKS:
        raise UsageError(f"Unknown task {task!r}; use one of {', '.join(contract.TASKS)} (--task).")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"Model name {name!r} cannot name an artifact folder: use letters, digits, '.', '_' and '-' (--name)."
        )
    size = _input_size(input_size)
    pre = _preprocess(preprocess)
    result = _probe(module, size)
    names, returns = contract.check_outputs(task, result, outputs)
    first = result[names[0]] if isinstance(result, dict) else (result if torch.is_tensor(result) else result[0])
    classes, class_names = contract.classes(task, first, module, num_classes, class_names)
    spec = ModelSpec(
        name=name,
        family="user",
        task=task,
        builder=type(module),  # never built from (not registered): the class, for information
        input_size=size,
        stride=_size_multiple(size_multiple, size),
        num_classes=classes,
        outputs=names,
        description=f"{references.class_path(module)} (your own model)",
        mean=pre["mean"],
        std=pre["std"],
        class_names=class_names,
    )
    recipe = source or {"kind": "module", "factory": None}
    full_source = {
        "kind": recipe["kind"],
        "class": references.class_path(module),
        "factory": recipe.get("factory"),
        "factory_kwargs": recipe.get("factory_kwargs", {}),
        "seed": references.FACTORY_SEED if recipe.get("factory") else None,
        "weights": recipe.get("weights"),
        "state_dict_sha256": state_dict_sha256(module),
        "input_size": list(size),
        "returns": returns,
        "output_names": list(names),
    }
    return UserModel(module, spec, full_source)


def from_factory(
    factory,
    *,
    task: str,
    input_size,
    name: str | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    weights_key: str | None = None,
    **describe,
) -> UserModel:
    """Build the model with ``factory`` (a reference 'pkg.mod:fn' / 'file.py:fn', or a function),
    load ``weights`` into it, and check it as ``from_module`` does.  The name defaults to the factory's."""
    from lightdeploy.weights import load_weights, weights_entry

    if isinstance(factory, str):
        ref, fn = factory, references.resolve(factory)
        recorded = _portable(factory)
    else:
        fn = factory
        recorded = references.reference_of(factory)
        ref = recorded or getattr(factory, "__qualname__", repr(factory))
    size = _input_size(input_size)
    kwargs = references.factory_kwargs(fn, ref, num_classes=num_classes, input_size=size)
    module = references.call(fn, ref, kwargs)
    if weights is not None:
        load_weights(module, weights, ref, weights_key)
    default_name = ref.rpartition(":")[2].replace(".", "_")
    source = {
        "kind": "factory",
        "factory": recorded,
        "factory_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "weights": weights_entry(weights, weights_key) if weights is not None else None,
    }
    return from_module(
        module,
        task=task,
        input_size=size,
        name=name or default_name,
        num_classes=num_classes,
        source=source,
        **describe,
    )


def rebuild(source: dict, weights: str | Path | None = None) -> nn.Module:
    """The eager model of an artifact exported from your own model (``lightdeploy parity DIR``, bench):
    the recorded factory called again, the recorded weights (``weights``, or found by name in the current
    folder) loaded, the state dict checked."""
    from lightdeploy.weights import load_weights, recorded_weights

    ref = source.get("factory")
    if not ref:
        origin = (
            "a module object, not from a factory"
            if source.get("kind") == "module"
            else "a factory defined inside a function or in __main__, which cannot be imported again"
        )
        raise UsageError(
            f"This artifact was exported from {origin} ({source.get('class')}), so lightdeploy cannot build the "
            "model again here. Check it in Python with lightdeploy.testing.assert_parity(model, ARTIFACT_DIR), or "
            "export it from an importable factory (lightdeploy export pkg.module:factory, or "
            "export_module('pkg.module:factory', ...))."
        )
    fn = references.resolve(ref)
    kwargs = {k: tuple(v) if k == "input_size" else v for k, v in source.get("factory_kwargs", {}).items()}
    module = references.call(fn, ref, kwargs, seed=source.get("seed") or references.FACTORY_SEED)
    if source.get("weights"):
        path = recorded_weights(source["weights"], weights, search=[Path.cwd()])
        load_weights(module, path, ref, source["weights"].get("key"))
    digest = state_dict_sha256(module)
    if digest != source["state_dict_sha256"]:
        raise UsageError(
            f"Factory {ref!r} now builds a model with other weights than the artifact was exported from "
            f"(state-dict sha256 {digest[:12]}..., the manifest says {source['state_dict_sha256'][:12]}...). "
            "If the model changed, re-export it; if the factory draws random weights, make them repeatable."
        )
    return wrap_outputs(module.eval(), source)


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ checks
def _input_size(input_size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise UsageError(
            f"input_size must be (H, W), e.g. (224, 224); got {input_size!r} (--input-size H W)."
        ) from None
    if h <= 0 or w <= 0:
        raise UsageError(f"input_size must be positive; got {h}x{w}.")
    return h, w


def _size_multiple(size_multiple: int, size: tuple[int, int]) -> int:
    if int(size_multiple) < 1 or size[0] % size_multiple or size[1] % size_multiple:
        raise UsageError(f"input_size {size[0]}x{size[1]} is not a multiple of size_multiple={size_multiple}.")
    return int(size_multiple)


def _preprocess(preprocess: dict | None) -> dict:
    pre = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "channel_order": "RGB", **(preprocess or {})}
    unknown = sorted(set(pre) - set(PREPROCESS_KEYS))
    if unknown:
        raise UsageError(f"preprocess has unknown key(s) {', '.join(unknown)}; it takes {', '.join(PREPROCESS_KEYS)}.")
    if pre["channel_order"] != "RGB":
        raise UsageError(
            f"channel_order {pre['channel_order']!r} is not offered: lightdeploy's runtimes feed RGB. Reverse the "
            "channels inside the model (x.flip(1)) and export it with RGB."
        )
    for key in ("mean", "std"):
        values = tuple(float(v) for v in pre[key])
        if len(values) != 3 or (key == "std" and min(values) <= 0):
            raise UsageError(f"preprocess {key} must be 3 numbers (R, G, B on [0, 1] values); got {pre[key]!r}.")
        pre[key] = values
    return pre


@torch.no_grad()
def _probe(module: nn.Module, size: tuple[int, int]):
    """One forward of an eval-mode copy on a random batch (a local generator: the global RNG is left)."""
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    try:
        return copy.deepcopy(module).eval()(x)
    except Exception as exc:  # noqa: BLE001 - the user's forward failed: report it as bad input
        raise UsageError(
            f"The model failed on a [1, 3, {size[0]}, {size[1]}] input: {type(exc).__name__}: {exc}. "
            "Check input_size and that forward takes one image batch."
        ) from exc


def _portable(ref: str) -> str:
    """A file reference relative to the current folder (no absolute paths in manifests)."""
    where, attr = references.split_reference(ref)
    if references.is_file_reference(where):
        where = os.path.relpath(Path(where).resolve())
    return f"{where}:{attr}"
