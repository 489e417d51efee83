"""TFLite backend: the LiteRT interpreter (``ai_edge_litert``) with XNNPACK, or ``tflite_runtime``.

``ai_edge_litert.interpreter.Interpreter`` applies XNNPACK by default; ``tflite_runtime`` is the
fallback an edge device may have instead.  Feeds are mapped to tensor indices through the model's
signature (the exporter names the signature's input and outputs after the manifest), with fallbacks
for files converted elsewhere: tensor names that contain the manifest name, then position.  The
manifest's shapes are what ``run`` returns: NCHW, or NHWC where the manifest says ``layout: NHWC``
(``--nhwc``).  An output marked ``file_layout: NHWC`` (a segmenter's logits) is stored channel-last in
the file and returned as an NCHW *view* of it (``np.transpose``, no copy): equal values, channel-last
strides; ``np.ascontiguousarray`` gives NCHW memory where a caller needs it.  Outputs come back from
LiteRT already copied out of the interpreter, so they are not copied again.  numpy only: no torch, no
tensorflow.

Threads: an interpreter holds its tensors and its arena, so one shared interpreter is not safe (issue
14: 146 of 200 threaded calls wrong for shufflenetv2 with no error, thundernet crashing in gather_nd).
Each call takes an interpreter of its own from a pool (``base.Pool``), made on demand.
Modes: ``latency`` keeps one interpreter on ``threads`` threads, so concurrent calls queue on it
(a lock, in effect: each call gets every thread, and memory holds one XNNPACK weight copy);
``throughput`` keeps one single-threaded interpreter per core, so concurrent callers and
``predict_many`` run side by side (LiteRT releases the GIL while it invokes).  Measured at 1/2/4 caller
threads against the lock in docs/measurements.md#runtime-threads; results are bit-identical either way
(``tests/test_concurrency.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lightdeploy.errors import ArtifactError, UsageError, missing_package
from lightdeploy.runtimes.base import Pool, RuntimeBase, TensorSpec, check_mode, check_threads

# Interpreters in latency mode (on ``threads`` threads each); see the module docstring.
LATENCY_INTERPRETERS = 1


def interpreter_class():
    """(Interpreter class, package name): ai-edge-litert first, tflite-runtime on devices without it."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise missing_package("ai-edge-litert", "tflite-runtime", "Running TFLite artifacts") from None


class _Slot:
    """One interpreter and, when the model's signature names every manifest tensor, its runner."""

    def __init__(self, interpreter, runner):
        self.interpreter, self.runner = interpreter, runner


class TFLiteBackend(RuntimeBase):
    backend = "tflite"

    def __init__(
        self,
        model_path: str | Path,
        manifest: dict,
        threads: int | None = None,
        *,
        mode: str = "latency",
        device: str | None = None,
        interpreters: int | None = None,
    ):
        check_threads(threads)
        check_mode(mode)
        if device is not None and str(device).upper() != "CPU":
            raise UsageError(
                f"TFLite artifacts run on the CPU (LiteRT with XNNPACK); device {device!r} is not offered. "
                "Omit device, or export to openvino / onnx for other devices."
            )
        self._interpreter_cls, self.package = interpreter_class()
        self._model_path = str(model_path)
        # latency: each interpreter on ``threads`` threads; throughput: one thread each, one per core.
        self._num_threads = 1 if mode == "throughput" else threads
        cores = os.cpu_count() or 1
        size = interpreters or (cores if mode == "throughput" else LATENCY_INTERPRETERS)
        ins = [TensorSpec.from_manifest(e) for e in manifest["inputs"]]
        outs = [TensorSpec.from_manifest(e) for e in manifest["outputs"]]
        super().__init__(ins, outs)
        self._channel_last = {e["name"] for e in manifest["outputs"] if e.get("file_layout") == "NHWC"}
        self._signature = manifest.get("backend_info", {}).get("signature")
        self._slots = Pool(self._new_slot, size)  # the first interpreter opens the file now
        self.parallelism = size
        self.info.update(
            {
                "mode": mode,
                "device": "CPU",
                "package": self.package,
                "threads_per_interpreter": self._num_threads or "LiteRT default",
                "interpreters": size,
                "concurrency": f"a pool of up to {size} interpreter(s), one per call in flight",
            }
        )

    def _new_slot(self) -> _Slot:
        try:
            interp = self._interpreter_cls(model_path=self._model_path, num_threads=self._num_threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"The LiteRT interpreter cannot open {self._model_path!r}: {exc}") from None
        runner, in_details, out_details = self._details(interp, self._signature)
        if not hasattr(self, "_in"):  # tensor indices are the model's: the same in every interpreter
            self._in = _resolve(self.inputs, in_details, "input", self._model_path)
            self._out = _resolve(self.outputs, out_details, "output", self._model_path, self._channel_last)
        return _Slot(interp, runner)

    def _details(self, interp, signature: str | None):
        """(runner or None, input details, output details), named by the signature when the model has one."""
        sigs = interp.get_signature_list() if hasattr(interp, "get_signature_list") else {}
        key = signature if signature in sigs else (next(iter(sigs)) if len(sigs) == 1 else None)
        plain_in, plain_out = interp.get_input_details(), interp.get_output_details()
        if key is None:
            return None, plain_in, plain_out
        runner = interp.get_signature_runner(key)
        named = []
        for table in (runner.get_input_details(), runner.get_output_details()):
            named.append([{**d, "name": n} for n, d in table.items()])
        names = {d["name"] for d in named[0] + named[1]}
        # The runner reads outputs through the signature: after ai-edge-quantizer rewrites a graph, a
        # signature output need not be a buffer get_tensor can read directly.
        usable = {t.name for t in self.inputs + self.outputs} <= names
        return (runner if usable else None), named[0], named[1]

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._slots.take() as slot:
            if slot.runner is not None:
                result = slot.runner(**{s.name: _to_tensor(feeds[s.name], self._in[s.name]) for s in self.inputs})
                return {s.name: self._output(result[s.name], s) for s in self.outputs}
            interp = slot.interpreter
            for spec in self.inputs:
                detail = self._in[spec.name]
                interp.set_tensor(detail["index"], _to_tensor(feeds[spec.name], detail))
            interp.invoke()
            return {
                spec.name: self._output(interp.get_tensor(self._out[spec.name]["index"]), spec) for spec in self.outputs
            }

    def _output(self, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
        value = _from_tensor(array, self._out[spec.name], spec)
        return value.transpose(0, 3, 1, 2) if spec.name in self._channel_last else value

    def _close_impl(self) -> None:
        self._slots.close()


def _resolve(specs: list[TensorSpec], details: list[dict], kind: str, path, channel_last=()) -> dict[str, dict]:
    """{manifest name: interpreter detail}: exact name, then a name containing it, then position.

    ``channel_last``: names whose file tensor is the NHWC form of the manifest's NCHW shape.
    """
    out: dict[str, dict] = {}
    free = list(details)
    for spec in specs:
        match = [d for d in free if d["name"] == spec.name]
        if not match:
            match = [d for d in free if spec.name in d["name"].split(":")[0]]
        if len(match) == 1:
            out[spec.name] = match[0]
            free.remove(match[0])
    unmatched = [s for s in specs if s.name not in out]
    if unmatched and len(unmatched) == len(free):  # a model converted without our names: by order
        out.update({s.name: d for s, d in zip(unmatched, free)})
    elif unmatched:
        raise ArtifactError(
            f"Cannot map the manifest's {kind}s {[s.name for s in unmatched]} to the tensors of "
            f"{str(path)!r} ({[d['name'] for d in details]}). Re-export the artifact."
        )
    for spec in specs:
        got = tuple(int(v) for v in out[spec.name]["shape"])
        if spec.name in channel_last and len(got) == 4:
            got = (got[0], got[3], got[1], got[2])
        if len(got) != len(spec.shape) or any(w is not None and w != g for w, g in zip(spec.shape, got)):
            raise ArtifactError(
                f"The manifest's {kind} {spec.name!r} has shape {list(spec.shape)} but the model file's "
                f"tensor has {list(got)}; the manifest does not describe this file. Re-export it."
            )
    return out


def _to_tensor(array: np.ndarray, detail: dict) -> np.ndarray:
    """Quantise a float feed for an integer model input (files with int8 I/O); else pass through."""
    dtype = np.dtype(detail["dtype"])
    if array.dtype == dtype:
        return array
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale + zero), info.min, info.max).astype(dtype)
    return array.astype(dtype)


def _from_tensor(array: np.ndarray, detail: dict, spec: TensorSpec) -> np.ndarray:
    """Dequantise an integer output the manifest declares as float; else cast to the manifest's dtype.

    LiteRT's ``get_tensor`` and signature runners return a fresh array that owns its memory; anything
    else (a view of the interpreter's buffer, which the next call overwrites) is copied.
    """
    want = np.dtype(spec.dtype)
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(want, np.floating) and np.issubdtype(array.dtype, np.integer) and scale:
        return ((array.astype(np.float32) - zero) * scale).astype(want)
    return array.astype(want, copy=not array.flags.owndata)


def opened_files(folder: Path, manifest: dict) -> list[str]:
    """The artifact files this backend reads (each must be listed, with its hash, in the manifest)."""
    return [manifest["backend_file"]]


def open_artifact(
    folder: Path, manifest: dict, threads: int | None = None, mode: str = "latency", device=None
) -> TFLiteBackend:
    return TFLiteBackend(Path(folder) / manifest["backend_file"], manifest, threads=threads, mode=mode, device=device)
