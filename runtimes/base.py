"""The Runtime protocol every backend implements, and the I/O checks they share.

A backend opens one compiled artifact file and runs it on named numpy arrays.  Public methods
validate; ``_run_impl`` does the work (Polygraphy's runner layout).  Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from lightdeploy.errors import UsageError

# ONNX element type names (as ONNX Runtime reports them inside "tensor(...)", and as
# TensorProto.DataType names in lower case) -> the numpy dtype names the manifest uses.
_ONNX_TYPE_NAMES = {
    "float": "float32",
    "double": "float64",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "int32": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}


def onnx_type_to_numpy(name: str) -> str:
    """'tensor(float)' or 'float' -> 'float32'; an unknown type keeps its name."""
    inner = name[len("tensor(") : -1] if name.startswith("tensor(") else name
    return _ONNX_TYPE_NAMES.get(inner, inner)


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dim) and numpy dtype name of one graph input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @classmethod
    def from_manifest(cls, entry: dict) -> TensorSpec:
        return cls(entry["name"], tuple(d if isinstance(d, int) else None for d in entry["shape"]), entry["dtype"])


@runtime_checkable
class Runtime(Protocol):
    """One loaded artifact, ready to run."""

    backend: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` maps every input name to an array of its shape and dtype."""
        ...


class RuntimeBase:
    """Shared validation: every backend's ``run`` checks names, shapes and dtypes the same way."""

    backend = "base"

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.inputs = inputs
        self.outputs = outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feeds(feeds)
        return self._run_impl({k: np.ascontiguousarray(v) for k, v in feeds.items()})

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        names = {t.name for t in self.inputs}
        if set(feeds) != names:
            raise UsageError(
                f"The {self.backend} model takes inputs {sorted(names)}; got {sorted(feeds)}. "
                "Feed each input by its name."
            )
        for spec in self.inputs:
            arr = feeds[spec.name]
            if not isinstance(arr, np.ndarray):
                raise UsageError(f"Input {spec.name!r} must be a numpy array; got {type(arr).__name__}.")
            if arr.dtype != np.dtype(spec.dtype):
                raise UsageError(
                    f"Input {spec.name!r} must have dtype {spec.dtype}; got {arr.dtype}. "
                    f"Convert it with array.astype(np.{spec.dtype})."
                )
            want = spec.shape
            if arr.ndim != len(want) or any(w is not None and w != a for w, a in zip(want, arr.shape)):
                shown = "x".join("?" if w is None else str(w) for w in want)
                raise UsageError(
                    f"Input {spec.name!r} must have shape {shown} ('?' = any size); got "
                    f"{'x'.join(map(str, arr.shape))}. Use the wrapper's predict(image) to resize, "
                    "or re-export with --input-size / --dynamic-batch."
                )
