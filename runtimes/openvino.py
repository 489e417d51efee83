"""OpenVINO backend: the IR compiled for CPU with the latency hint and f32 inference precision.

Why f32 is pinned for every artifact: on hosts with AVX-512 BF16 / AMX, OpenVINO's CPU plugin
silently computes in bf16 unless ``INFERENCE_PRECISION_HINT`` says otherwise, which breaks fp32
parity and makes results depend on the machine.  The fp16 artifact stores FP16 weights, but the CPU
plugin still computes in f32 (the weights are decompressed at load); the int8 artifact's quantised
ops run in int8 and the rest in f32.  The effective precision is read back from the compiled model
and exposed as ``inference_precision``.

Imports only numpy, openvino (inside) and lightdeploy's torch-free modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdeploy.errors import ArtifactError, UsageError, require
from lightdeploy.runtimes.base import RuntimeBase, TensorSpec

DEVICE = "CPU"
INFERENCE_PRECISION = "f32"


class OpenVinoBackend(RuntimeBase):
    backend = "openvino"

    def __init__(self, model_path: str | Path, threads: int | None = None, output_names: list[str] | None = None):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise UsageError(f"threads must be a positive integer; got {threads!r}.")
        ov = require("openvino", package="openvino", extra="openvino", purpose="Running OpenVINO artifacts")
        config = {
            "PERFORMANCE_HINT": "LATENCY",  # one stream, all threads on one request: batch-1 latency
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self._compiled = core.compile_model(str(model_path), DEVICE, config)
        self._request = self._compiled.create_infer_request()
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
        self._out_ports = out_ports
        out_names = list(output_names) if output_names else [p.get_any_name() for p in out_ports]
        super().__init__(
            [_spec(p.get_any_name(), p) for p in in_ports], [_spec(n, p) for n, p in zip(out_names, out_ports)]
        )

    @property
    def inference_precision(self) -> str:
        """The precision the compiled model really computes in (e.g. 'f32'), read from OpenVINO."""
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    @property
    def threads(self) -> int:
        return int(self._compiled.get_property("INFERENCE_NUM_THREADS"))

    def property(self, name: str):
        """Any property of the compiled model (``PERFORMANCE_HINT``, ``NUM_STREAMS``, ...)."""
        return self._compiled.get_property(name)

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs: ``run`` already made the feeds contiguous and the call is synchronous.
        result = self._request.infer(feeds, share_inputs=True)
        return {spec.name: result[port] for spec, port in zip(self.outputs, self._out_ports)}


def _spec(name: str, port) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(name, shape, np.dtype(port.get_element_type().to_dtype()).name)


def open_artifact(folder: Path, manifest: dict, threads: int | None = None) -> OpenVinoBackend:
    names = [o["name"] for o in manifest.get("outputs", [])] or None
    return OpenVinoBackend(Path(folder) / manifest["backend_file"], threads=threads, output_names=names)
