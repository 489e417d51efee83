"""Loading user-supplied weights safely.

Weights files are untrusted input: ``.safetensors`` files are read with safetensors, everything else
with ``torch.load(weights_only=True)``, which refuses pickled code.  Checkpoints load as training
scripts save them: the state dict nested under ``state_dict`` / ``model`` / ``ema`` (``WRAPPER_KEYS``;
``--weights-key`` picks one when a file holds several), with DataParallel's ``module.`` and
torch.compile's ``_orig_mod.`` prefixes stripped.  torchvision checkpoints of mobilenet_v2 and
shufflenet_v2_x* load as they are: those families use torchvision's module names.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from lightdeploy.errors import UsageError

_SHOW = 10  # offending keys listed per kind of mismatch
# Where training scripts nest the state dict: {"state_dict": ...} (Lightning, mmcv), {"model": ...}
# (detectron2, torchvision references), {"ema": ...} / {"model_ema": ...} / {"state_dict_ema": ...}
# (EMA weights, e.g. timm), {"module": ...} (a saved DataParallel).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "ema", "model_ema", "state_dict_ema")
# Prefixes that wrappers add to every key: DataParallel / DDP ("module."), torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without executing any code from the file.

    ``key``: the entry of a checkpoint dict that holds the state dict to use (e.g. "state_dict_ema");
    without it, the one nested under a known key (``WRAPPER_KEYS``) is found, or the file is refused
    when it holds several (model and EMA weights: the caller must say which is deployed).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Weights file {str(path)!r} does not exist. Check the path given to --weights.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise UsageError(f"Weights file {str(path)!r} is not a valid safetensors file ({exc}).") from None
    else:
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
    return _unwrap(obj, path, key)


def _unwrap(obj, path: Path, key: str | None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
            found = sorted(k for k, v in obj.items() if isinstance(v, dict)) if isinstance(obj, dict) else []
            raise UsageError(
                f"Weights file {str(path)!r} has no state dict under {key!r}; it has dicts under: "
                f"{', '.join(found) or 'none'}. Give one of those to --weights-key."
            )
        obj = obj[key]
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if len(nested) > 1:
            ema = [k for k in nested if "ema" in k]
            example = f" (e.g. --weights-key {ema[0]} for the EMA weights)" if ema else ""
            raise UsageError(
                f"Weights file {str(path)!r} holds several state dicts ({', '.join(nested)}); say which one "
                f"to deploy with --weights-key{example}."
            )
        if not nested:
            break
        obj = obj[nested[0]]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(
            f"Weights file {str(path)!r} holds no state dict (a mapping of names to tensors), nor one nested "
            f"under {', '.join(WRAPPER_KEYS)}. Save model.state_dict(), or name its entry with --weights-key."
        )
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def load_weights(model: nn.Module, path: str | Path, model_name: str, key: str | None = None) -> None:
    """Load ``path`` into ``model`` strictly; any key or shape mismatch is a UsageError naming keys.

    A missing ``num_batches_tracked`` (BN's step counter, dropped by some exporters) is not a mismatch:
    eval never reads it, so the model's own value stays.
    """
    state = read_state_dict(path, key)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
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
    model.load_state_dict({**expected, **state}, strict=True)


def _num_classes_hint(state: dict, expected: dict) -> str | None:
    """If only the classifier's output size differs, say which --num-classes fits the file."""
    for key, tensor in expected.items():
        if key.endswith(".weight") and tensor.ndim == 2 and key in state and state[key].ndim == 2:
            if state[key].shape[1] == tensor.shape[1] and state[key].shape[0] != tensor.shape[0]:
                return (
                    f"The file's classifier has {state[key].shape[0]} classes: add --num-classes {state[key].shape[0]}."
                )
    return None


# ------------------------------------------------------------------------------ the manifest's entry
def weights_entry(path: str | Path, key: str | None = None) -> dict:
    """How an artifact's manifest records the weights file it was exported from: by file name and sha256,
    never by path, so the manifest carries nothing of the exporting machine (``recorded_weights`` finds
    the file again)."""
    from lightdeploy.runtimes.manifest import sha256

    entry = {"file": Path(path).name, "sha256": sha256(Path(path))}
    if key is not None:
        entry["key"] = key
    return entry


def recorded_weights(entry: dict | None, given: str | Path | None, search: list[Path]) -> Path | None:
    """The weights file an artifact was exported from, by the name and sha256 its manifest records.

    ``given`` (``--weights``) must have that sha256; without it the recorded name is looked up in the
    ``search`` folders (beside the artifact, the current folder).  Manifests record no path: they are
    the same on every machine (docs/design.md#artifact).  None when the artifact used random weights.
    """
    from lightdeploy.runtimes.manifest import sha256

    if entry and "named" in entry:
        return None  # MODEL:TAG weights: create_model finds (and checks) the file by its name
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
