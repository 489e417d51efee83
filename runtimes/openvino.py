"""OpenVINO backend: the IR compiled for a device with a performance hint and f32 inference precision.

Threads: a pool of ``InferRequest`` objects, as many as the compiled model's
``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` (1 under the latency hint on CPU, one per stream under the
throughput hint); each call takes a request for itself, so no request is ever shared.  One shared
request is not safe: it gave wrong outputs or "Infer Request is busy" in 189 of 200 calls from 8
threads (issue 14); the pool is bit-identical to single-threaded calls (``tests/test_concurrency.py``).
Modes: ``latency`` is ``PERFORMANCE_HINT=LATENCY`` (one stream, every thread on one request);
``throughput`` is ``PERFORMANCE_HINT=THROUGHPUT`` (OpenVINO picks the streams; each runs one request
on its share of the cores), for concurrent callers and ``predict_many``.

Why f32 is pinned: on hosts with AVX-512 BF16 / AMX, OpenVINO's CPU plugin silently computes in bf16
unless ``INFERENCE_PRECISION_HINT`` says otherwise (and its GPU plugin in f16), which breaks fp32
parity and makes results depend on the machine.  The fp16 artifact stores FP16 weights, but the CPU
plugin still computes in f32 (the weights are decompressed at load); the int8 artifact's quantised
ops run in int8 and the rest in f32.  The NPU computes in its own precision: there ``info`` says the
gate's CPU verdict does not cover the numbers.  The effective precision is read back from the
compiled model and exposed as ``inference_precision``.

Devices: ``device`` is an OpenVINO device name: CPU (default), GPU, GPU.1, NPU, AUTO, or a virtual
device with candidates (``AUTO:GPU,CPU``, ``HETERO:GPU,CPU``); a device OpenVINO does not find here
is exit 3 with the devices it has.

Imports only numpy, openvino (inside) and lightdeploy's torch-free modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdeploy.errors import ArtifactError, MissingDependencyError, UsageError, require
from lightdeploy.runtimes.base import Pool, RuntimeBase, TensorSpec, check_mode, check_threads

DEVICE = "CPU"
INFERENCE_PRECISION = "f32"
PHYSICAL = ("CPU", "GPU", "NPU")
VIRTUAL = ("AUTO", "MULTI", "HETERO", "BATCH")
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def check_device(device: str, available: list[str]) -> list[str]:
    """The physical devices ``device`` names (``AUTO`` alone: all available); raise when one is unknown
    (exit 2) or not on this machine (exit 3)."""
    head, _, rest = device.partition(":")
    if head in VIRTUAL:
        targets = [t.strip() for t in rest.split(",") if t.strip()] if rest else list(available)
    else:
        targets = [device]
    for target in targets:
        family = target.split(".")[0]
        if family not in PHYSICAL:
            raise UsageError(
                f"Unknown OpenVINO device {target!r}; use {', '.join(PHYSICAL)} (GPU.1 for a second GPU) or "
                f"{', '.join(VIRTUAL)}, e.g. 'AUTO:GPU,CPU'."
            )
        if target not in available and not any(a.split(".")[0] == target for a in available):
            raise MissingDependencyError(
                f"OpenVINO finds no {target} device here (available: {', '.join(available) or 'none'}). "
                "Install the device's driver, or choose an available device."
            )
    return targets


class OpenVinoBackend(RuntimeBase):
    backend = "openvino"

    def __init__(
        self,
        model_path: str | Path,
        threads: int | None = None,
        output_names: list[str] | None = None,
        *,
        mode: str = "latency",
        device: str | None = None,
    ):
        check_threads(threads)
        check_mode(mode)
        ov = require("openvino", package="openvino", extra="openvino-runtime", purpose="Running OpenVINO artifacts")
        device = (device or DEVICE).upper()
        core = ov.Core()
        targets = check_device(device, list(core.available_devices))
        config = {"PERFORMANCE_HINT": HINTS[mode]}
        pinned = not any(t.startswith("NPU") for t in targets)
        if pinned:
            config["INFERENCE_PRECISION_HINT"] = INFERENCE_PRECISION
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(model_path))
        except RuntimeError as exc:
            raise ArtifactError(
                f"OpenVINO cannot read {str(model_path)!r} (with its .bin): {_cause(exc)}. Re-export the artifact."
            ) from None
        try:
            self._compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            raise ArtifactError(f"OpenVINO cannot compile {str(model_path)!r} for {device}: {_cause(exc)}.") from None
        in_ports = list(self._compiled.inputs)
        out_ports = list(self._compiled.outputs)
        if output_names:
            by_name = {n: p for p in out_ports for n in p.get_names()}
            missing = [n for n in output_names if n not in by_name]
            if missing:
                raise ArtifactError(
                    f"{str(model_path)!r} has no output(s) {missing} that the manifest lists (it has "
                    f"{sorted(by_name)}); the artifact is inconsistent: re-export it."
                )
            out_ports = [by_name[n] for n in output_names]
        self._ov, self._in_ports, self._out_ports = ov, in_ports, out_ports
        out_names = list(output_names) if output_names else [p.get_any_name() for p in out_ports]
        requests = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = Pool(self._compiled.create_infer_request, requests)
        self.parallelism = requests
        super().__init__(
            [_spec(p.get_any_name(), p) for p in in_ports],
            [_spec(n, p) for n, p in zip(out_names, out_ports)],
            {
                "mode": mode,
                "device": device,
                "execution_devices": self._property("EXECUTION_DEVICES"),
                "performance_hint": HINTS[mode],
                "streams": self._property("NUM_STREAMS"),
                "threads": self._property("INFERENCE_NUM_THREADS"),
                "inference_precision": INFERENCE_PRECISION if pinned else "the device's own (not pinned)",
                "infer_requests": requests,
                "concurrency": f"a pool of {requests} InferRequest(s) (OPTIMAL_NUMBER_OF_INFER_REQUESTS)",
                **(
                    {}
                    if pinned
                    else {
                        "note": "the NPU computes in its own precision; the parity gate's CPU verdict does not cover it"
                    }
                ),
            },
        )

    def _property(self, name: str):
        """A compiled-model property as plain data, or None where the device does not report it."""
        try:
            value = self._compiled.get_property(name)
        except RuntimeError:
            return None
        return value if isinstance(value, (int, str, list)) else str(value)

    @property
    def inference_precision(self) -> str:
        """The precision the compiled model really computes in (e.g. 'f32'), read from OpenVINO."""
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    @property
    def threads(self) -> int:
        return int(self._compiled.get_property("INFERENCE_NUM_THREADS"))

    @property
    def compiled_model(self):
        """The ``openvino.CompiledModel`` behind this runtime, for tools that drive OpenVINO directly
        (benchmark loops, per-layer profiling).  Its infer requests are outside this runtime's pool:
        a caller sharing one across threads serialises the calls itself."""
        return self._compiled

    def property(self, name: str):
        """Any property of the compiled model (``PERFORMANCE_HINT``, ``NUM_STREAMS``, ...)."""
        return self._compiled.get_property(name)

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Tensors set on the request and a bare ``infer()``: ``infer(feeds)`` dispatches the inputs and
        # builds a dict of every output in Python, which shows per call (docs/measurements.md#speed-targets-amd).
        # The tensors share the feeds' memory (``run`` made them contiguous, the call is synchronous).  The
        # request keeps only their C++ side, which does not keep an array alive: ``feeds`` does, to the end
        # of the call, copies included (OpenVINO cannot share a read-only array).  Outputs are copied out
        # of the request before it goes back to the pool.
        feeds = {name: array if array.flags.writeable else array.copy() for name, array in feeds.items()}
        with self._requests.take() as request:
            for spec, port in zip(self.inputs, self._in_ports):
                request.set_tensor(port, self._ov.Tensor(feeds[spec.name], shared_memory=True))
            request.infer()
            return {
                spec.name: request.get_tensor(port).data.copy() for spec, port in zip(self.outputs, self._out_ports)
            }

    def _close_impl(self) -> None:
        self._requests.close()
        self._compiled = None


def _spec(name: str, port) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(name, shape, np.dtype(port.get_element_type().to_dtype()).name)


def _cause(exc: Exception) -> str:
    """OpenVINO's message without its C++ source locations."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    return " ".join(lines) or type(exc).__name__


def opened_files(folder: Path, manifest: dict) -> list[str]:
    """The IR's .xml and the .bin OpenVINO reads beside it (same stem)."""
    xml = manifest["backend_file"]
    return [xml, str(Path(xml).with_suffix(".bin"))]


def open_artifact(
    folder: Path, manifest: dict, threads: int | None = None, mode: str = "latency", device=None
) -> OpenVinoBackend:
    names = [o["name"] for o in manifest.get("outputs", [])] or None
    return OpenVinoBackend(
        Path(folder) / manifest["backend_file"], threads=threads, output_names=names, mode=mode, device=device
    )
