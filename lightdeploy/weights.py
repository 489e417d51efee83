"""Loading user-supplied weights safely.

Weights files are untrusted input: ``.safetensors`` files are read with safetensors, everything else
with ``torch.load(weights_only=True)``, which refuses pickled code.  torchvision checkpoints of
mobilenet_v2 and shufflenet_v2_x* load as they are: those families use torchvision's module names.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from lightdeploy.errors import UsageError

_SHOW = 5  # offending keys listed per kind of mismatch
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without executing any code from the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Weights file {str(path)!r} does not exist. Check the path given to --weights.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise UsageError(f"Weights file {str(path)!r} is not a valid safetensors file ({exc}).") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(
            f"Refused to load {str(path)!r}: it is a pickle that holds more than tensors "
            f"(code or custom objects), which lightdeploy never executes. Re-save it as a plain state "
            f"dict (torch.save(model.state_dict(), path)) or as .safetensors. Detail: {str(exc).splitlines()[0]}"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"Cannot read weights file {str(path)!r}: {exc}. Give a PyTorch state dict or a .safetensors file."
        ) from None
    return _unwrap(obj, path)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts often save {"state_dict": ...} or {"model": ...}, and DataParallel adds "module.".
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise UsageError(f"Weights file {str(path)!r} holds no state dict (a mapping of names to tensors).")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, model_name: str) -> None:
    """Load ``path`` into ``model`` strictly; any key or shape mismatch is a UsageError naming keys."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (
            ("missing from the file", missing),
            ("not in the model", unexpected),
            ("with a different shape", wrong_shape),
        ):
            if keys:
                more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
                parts.append(f"{len(keys)} key(s) {label}: {', '.join(keys[:_SHOW])}{more}")
        hint = _num_classes_hint(state, expected)
        raise UsageError(
            f"Weights file {str(path)!r} does not fit model {model_name!r}: "
            + "; ".join(parts)
            + ". "
            + (hint or "Check that the file was saved from this model (same name and width).")
        )
    model.load_state_dict(state, strict=True)


def _num_classes_hint(state: dict, expected: dict) -> str | None:
    """If only the classifier's output size differs, say which --num-classes fits the file."""
    for key, tensor in expected.items():
        if key.endswith(".weight") and tensor.ndim == 2 and key in state and state[key].ndim == 2:
            if state[key].shape[1] == tensor.shape[1] and state[key].shape[0] != tensor.shape[0]:
                return (
                    f"The file's classifier has {state[key].shape[0]} classes: add --num-classes {state[key].shape[0]}."
                )
    return None


def recorded_weights(entry: dict | None, given: str | Path | None, search: list[Path]) -> Path | None:
    """The weights file an artifact was exported from, by the name and sha256 its manifest records.

    ``given`` (``--weights``) must have that sha256; without it the recorded name is looked up in the
    ``search`` folders (beside the artifact, the current folder).  Manifests record no path: they are
    the same on every machine (docs/design.md#artifact).  None when the artifact used random weights.
    """
    from lightdeploy.runtimes.manifest import sha256

    if not entry:
        if given is not None:
            raise UsageError(
                "This artifact was exported from seeded random weights, not from a weights file; run parity "
                "without --weights."
            )
        return None
    name = entry.get("file") or Path(entry.get("path", "")).name  # "path": manifests before names-only
    expected = entry["sha256"]
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"Weights file {str(path)!r} does not exist. Check the path given to --weights.")
        actual = sha256(path)
        if actual != expected:
            raise UsageError(
                f"Refused weights {str(path)!r}: their sha256 is {actual[:12]}..., the artifact was exported from "
                f"{name} with sha256 {expected[:12]}.... Parity against other weights would judge another model; "
                "give the file the artifact was exported from."
            )
        return path
    for folder in search:
        path = folder / name
        if path.is_file() and sha256(path) == expected:
            return path
    where = f", not found in {', '.join(str(f) for f in search)}" if search else ""
    raise UsageError(
        f"This artifact was exported from weights {name} (sha256 {expected[:12]}...){where}; parity rebuilds "
        "the eager model from them. Give the file with --weights FILE."
    )
