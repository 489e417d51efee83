"""The Runtime protocol every backend implements, the I/O checks they share, and the pool that makes
them safe to call from many threads.

A backend opens one compiled artifact file and runs it on named numpy arrays.  Public methods
validate; ``_run_impl`` does the work (Polygraphy's runner layout).  Every runtime object may be
called from many threads at once with results bit-identical to single-threaded calls; each backend
module's docstring says how (docs/design.md#runtimes).  Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from lightdeploy.errors import UsageError

# "latency": one call at a time gets the whole machine (every thread on one inference).
# "throughput": many calls at once, each on fewer threads (OpenVINO streams, one-thread interpreters).
MODES = ("latency", "throughput")

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
    """One loaded artifact, ready to run from any number of threads."""

    backend: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: dict  # backend, device, mode, threads, the concurrency mechanism, the parity verdict

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` maps every input name to an array of its shape and dtype."""
        ...

    def close(self) -> None:
        """Release the backend's resources; ``run`` raises afterwards."""
        ...


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    return mode


def check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive integer; got {threads!r}.")
    return threads


class RuntimeBase:
    """Shared validation and life cycle: every backend's ``run`` checks names, shapes and dtypes the
    same way; ``close()`` (or leaving a ``with`` block) releases the backend."""

    backend = "base"
    # How many calls the runtime serves at once without queueing (its pool size); predict_many runs
    # that many batches concurrently.
    parallelism = 1

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], info: dict | None = None):
        self.inputs = inputs
        self.outputs = outputs
        self.info = {"backend": self.backend, **(info or {})}
        self._closed = False

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise UsageError(f"This {self.backend} runtime is closed; load the artifact again to run it.")
        self._check_feeds(feeds)
        return self._run_impl({k: np.ascontiguousarray(v) for k, v in feeds.items()})

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend (idempotent).  Calls still in flight finish; later calls raise."""
        if not self._closed:
            self._closed = True
            self._close_impl()

    def _close_impl(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        names = {t.name for t in self.inputs}
        if not isinstance(feeds, Mapping):
            example = ", ".join(f"{n!r}: array" for n in sorted(names))
            raise UsageError(
                f"run() takes a dict of the model's inputs by name; got {type(feeds).__name__}. "
                f"Call run({{{example}}})."
            )
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


T = TypeVar("T")


class Pool(Generic[T]):
    """A bounded pool of per-call backend objects (OpenVINO infer requests, LiteRT interpreters,
    TensorRT execution contexts): a call takes one for itself and gives it back, so no object is ever
    used by two threads at once.

    Objects are made on demand up to ``size`` (the first one at construction, so a broken file fails
    at load); a call that finds none free waits for one.  A pool rather than one object per thread:
    its memory is bounded whatever the number of caller threads, and nothing dies with a thread.
    A list under one condition variable rather than ``queue.Queue``: each call pays one lock round trip
    each way (a few microseconds less per call than the queue's locks and conditions).
    """

    def __init__(self, make: Callable[[], T], size: int, destroy: Callable[[T], None] = lambda item: None):
        if size < 1:
            raise UsageError(f"a pool needs at least one object; got size {size}.")
        self._make, self._destroy, self.size = make, destroy, size
        self._cond = threading.Condition(threading.Lock())
        self._free: list[T] = []  # a stack: the last returned is taken first, its caches warm
        self._made: list[T] = []
        self._making = 0  # objects being made outside the lock, counted against ``size``
        self._make_lock = threading.Lock()
        self._closed = False
        self._free.append(self._new())

    @property
    def created(self) -> int:
        return len(self._made)

    def _new(self) -> T:
        item = self._make()
        self._made.append(item)
        return item

    def _get(self) -> T:
        with self._cond:
            while True:
                if self._free:
                    return self._free.pop()
                if self._closed:  # what it waited for is destroyed when given back
                    raise UsageError("This runtime was closed while the call waited; load the artifact again.")
                if len(self._made) + self._making < self.size:
                    self._making += 1
                    break
                self._cond.wait()
        # made outside the condition's lock, so a slow make (an interpreter, a TensorRT context) does not
        # hold up calls giving theirs back; one make at a time: not every backend documents making them from several threads at once
        try:
            with self._make_lock:
                item = self._make()
        except BaseException:
            with self._cond:
                self._making -= 1
                self._cond.notify()  # a waiter may make one instead
            raise
        with self._cond:
            self._making -= 1
            self._made.append(item)
        return item

    def _give(self, item: T) -> None:
        with self._cond:
            if not self._closed:
                self._free.append(item)
                self._cond.notify()
                return
        self._destroy(item)

    @contextlib.contextmanager
    def take(self):
        item = self._get()
        try:
            yield item
        finally:
            self._give(item)

    def close(self) -> None:
        """Destroy the free objects now; one still in use is destroyed when its call gives it back."""
        with self._cond:
            self._closed = True
            free, self._free = self._free, []
            self._made.clear()
            self._cond.notify_all()
        for item in free:
            self._destroy(item)
