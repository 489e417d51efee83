"""OpenVINO export: the simplified ONNX -> ``openvino.convert_model`` -> rewrites -> IR (model.xml + .bin).

Precisions:
- fp32: IR with FP32 weights (``save_model(compress_to_fp16=False)``: OpenVINO's default compresses).
- fp16: FP16 weights (``compress_to_fp16=True``); on CPU the runtime still computes in f32 (the
  runtime pins ``INFERENCE_PRECISION_HINT``), so this halves the file, not the arithmetic.
- int8: NNCF post-training quantisation of the converted model (``quantize.py``); the remaining
  weights stay FP32.

The graph rewrites (``rewrites.py``) fix what OpenVINO computes differently from ONNX (a channel
permutation folded the wrong way, unstable TopK) or slowly (a channel-shuffle Gather left by the fold).
Channel shuffles are folded into the convolutions before conversion (``exporters/onnx/permutations.py``):
on channels-last tensors a shuffle moves single elements, no faster in int8 than in fp32.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob, ExportResult
from lightdeploy.exporters.onnx.export import ONNX_FILE, write_onnx
from lightdeploy.exporters.onnx.graph import graph_io
from lightdeploy.exporters.onnx.permutations import fold_channel_permutations
from lightdeploy.exporters.openvino import rewrites

IR_FILE = "model.xml"
FOLDED_ONNX_FILE = "model.rewritten.onnx"  # staged for convert_model, removed after
WEIGHTS_KIND = {"fp32": "fp32", "fp16": "fp16", "int8": "int8 (quantised ops), fp32 (rest)"}


class OpenVinoExporter:
    target = "openvino"
    backend = "openvino"
    precisions = ("fp32", "fp16", "int8")
    estimator = None  # OpenVINO's CPU plugin runs everywhere the gate runs

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        self._validate(job)
        return self._export_impl(job, workdir)

    def _validate(self, job: ExportJob) -> None:
        require("openvino", package="openvino", extra="openvino", purpose="OpenVINO export")
        if job.options.nhwc:
            raise UsageError(
                "OpenVINO artifacts take NCHW input (the layout the ONNX graph is built in); "
                "export without the NHWC option."
            )

    def _export_impl(self, job: ExportJob, workdir: Path) -> ExportResult:
        import onnx
        import openvino as ov

        precision = job.options.precision
        onnx_info, proto = write_onnx(job, workdir)
        guarded = rewrites.guard_permutation_gathers(proto)
        if guarded:
            onnx.save(proto, str(workdir / ONNX_FILE))  # model.onnx: the graph the IR is built from
            onnx_info["rewrites"] = {"gather_axis_made_negative": guarded, "why": rewrites.GUARD_WHY}
        inputs, outputs = graph_io(proto)

        t0 = time.perf_counter()
        # The IR is built from model.onnx with its channel permutations folded (recorded, and redone by
        # localisation to find the tensors they removed); the folded copy is not kept.
        folded = copy.deepcopy(proto)
        fold_counts = fold_channel_permutations(folded)
        rewrites.guard_permutation_gathers(folded)
        staged = workdir / FOLDED_ONNX_FILE
        onnx.save(folded, str(staged))
        try:
            model = ov.convert_model(str(staged))
        finally:
            staged.unlink()
        info: dict = {
            "onnx": onnx_info,
            "openvino": {
                "converted_from": ONNX_FILE,
                "channel_permutations_folded": fold_counts,
                "topk_made_stable": rewrites.stable_topk(model),
                "shuffle_channels": rewrites.shuffle_gathers_to_op(model),
            },
        }
        float_model = model.clone() if precision != "fp32" else None  # NNCF may rewrite in place
        log = {}
        if precision == "int8":
            from lightdeploy.exporters.openvino.quantize import quantize_int8

            t1 = time.perf_counter()
            model, info["int8"] = quantize_int8(model, job)
            log["quantize_seconds"] = round(time.perf_counter() - t1, 2)
        stable_auto_names(model)
        # FP16 weights only when asked: OpenVINO's save_model compresses to FP16 by default.
        ov.save_model(model, str(workdir / IR_FILE), compress_to_fp16=precision == "fp16")
        info["openvino"].update(
            {
                "weights": WEIGHTS_KIND[precision],
                "ops": len(model.get_ordered_ops()),
            }
        )
        log["convert_seconds"] = round(time.perf_counter() - t0, 2)
        twin = None
        if float_model is not None:

            def twin(folder: Path) -> str:
                ov.save_model(float_model, str(folder / IR_FILE), compress_to_fp16=False)
                return IR_FILE

        return ExportResult(self.backend, IR_FILE, inputs, outputs, info, log=log, float_twin=twin)


def stable_auto_names(model) -> int:
    """Renumber the names OpenVINO makes up for unnamed nodes ("Constant_771778": a counter global to
    the process) by position in the graph, so the IR is the same bytes in every process.  Without it,
    two int8 exports of one model differed in these names alone (docs/measurements.md#reproducible-exports).
    Only names of exactly that form are changed; the graph and its tensor names are not.  Returns the
    count renamed."""
    import re

    renamed = 0
    for index, op in enumerate(model.get_ordered_ops()):
        kind = op.get_type_name()
        if re.fullmatch(rf"{re.escape(kind)}_\d+", op.get_friendly_name()):
            op.set_friendly_name(f"{kind}_auto{index}")
            renamed += 1
    return renamed
