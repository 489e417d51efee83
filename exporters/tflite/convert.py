"""TFLite export through LiteRT's PyTorch converter (litert-torch): FP32, FP16 weights, full INT8.

Why this route: ONNX -> onnx2tf was measured silently wrong on these models' blocks, while
litert-torch converts the traced eager model exactly (docs/design.md#backends).  Steps:

1. ``model.onnx`` via ``write_onnx`` (kept in every artifact);
2. the eager model is wrapped so the LiteRT signature carries lightdeploy's names: the input is
   passed as keyword ``image`` and the outputs are returned as a dict keyed by the manifest's output
   names (the converter names signature I/O after kwargs and dict keys; positional args and tuples
   would come out as ``args_0`` / ``output_0``).  Every 4-D output (a segmenter's logits) leaves the
   file channel-last: the graph computes it NHWC, and a TRANSPOSE to NCHW at full resolution is a
   large share of a segmenter's latency (docs/measurements.md#tflite-bisenet-layout).  The manifest keeps such an
   output's NCHW shape and marks ``file_layout: NHWC``; the runtime returns an NCHW view of it.  With
   ``--nhwc`` the input is channel-last too, and the outputs stay NHWC for the caller;
3. ``litert_torch.convert`` with every custom op replaced by its body from
   ``lightdeploy.ops.tflite_decomposition_table()`` (registered as pre-convert decompositions: the
   converter cannot lower a ``torch.library.custom_op``): plain tensors, or a call of a TFLite
   builtin kernel lowered by ``builtins.py`` (``nms_fixed`` on NON_MAX_SUPPRESSION_V5); ``argmax``
   is kept channel-last (``layout.py``: a segmenter's class map reduces NHWC logits);
4. fp16 / int8: ai-edge-quantizer applied to the float flatbuffer (``quantize.py``);
5. the flatbuffer's operator list goes into the manifest; a Flex or custom op refuses the export
   (nothing is written), since a stock LiteRT interpreter on a device cannot run it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob, ExportResult
from lightdeploy.exporters.onnx.export import write_onnx
from lightdeploy.exporters.tflite.flatbuffer import SIGNATURE, check_builtin_only, list_ops, signature_io
from lightdeploy.logs import quiet, quiet_native_stderr

TFLITE_FILE = "model.tflite"


def spatial_outputs(model, x) -> list[int]:
    """Positions of the 4-D outputs (spatial maps) of ``model(x)``: the ones the file keeps channel-last.

    Boxes, scores, class maps and class scores have no channel axis and stay as they are.
    """
    import torch

    with torch.no_grad():
        probe = model(x)
    probe = probe if isinstance(probe, (tuple, list)) else (probe,)
    return [i for i, t in enumerate(probe) if t.dim() == 4]


def named_io_module(model, output_names: tuple[str, ...], nhwc_outputs: list[int], nhwc: bool):
    """The module that is converted: one keyword input, dict outputs keyed by the manifest names.

    ``nhwc_outputs``: the outputs returned channel-last; ``nhwc``: the input is channel-last too.  The
    permutes are what ``litert_torch.to_channel_last_io`` adds, written here so the model stays one
    level below this wrapper in the converted tensors' names (``quantize.module_path`` reads them).
    """
    import torch

    class NamedOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, image):
            result = self.inner(image.permute(0, 3, 1, 2) if nhwc else image)
            result = result if isinstance(result, (tuple, list)) else (result,)
            result = [t.permute(0, 2, 3, 1) if i in nhwc_outputs else t for i, t in enumerate(result)]
            return dict(zip(output_names, result))

    return NamedOutputs().eval()


@contextlib.contextmanager
def _decompositions():
    """Register lightdeploy's op decompositions (and the lowerings of the builtin-kernel ops they call,
    ``builtins.py``) with litert-torch for one conversion, then restore; yields the ops decomposed."""
    from litert_torch.fx_infra import decomp

    from lightdeploy.exporters.tflite import builtins, layout
    from lightdeploy.ops import tflite_decomposition_table

    with builtins.registered() as kernels:
        ops_table = tflite_decomposition_table(kernels)
        table = {**ops_table, **layout.decompositions()}
        current = decomp.pre_convert_decomp()
        before = {op: current.get(op) for op in table}
        for op, fn in table.items():
            decomp.add_pre_convert_decomp(op, fn)
        try:
            with layout.channel_max_is_channel_last():
                yield [str(op) for op in table]
        finally:
            for op, fn in before.items():
                if fn is None:
                    decomp.remove_pre_convert_decomp(op)
                else:
                    decomp.add_pre_convert_decomp(op, fn)


# One float conversion serves every precision: fp16 and int8 are rewrites of the float flatbuffer,
# so exporting a model at fp32, fp16 and int8 in one process (tests, bench) converts it once.
# Keyed by the module's class, its exact parameters and buffers, and the export shape/layout/names.
_FLOAT_CACHE: dict[str, tuple[bytes, list[int], list[str]]] = {}
_FLOAT_CACHE_SIZE = 4


def _fingerprint(job: ExportJob) -> str:
    import hashlib

    import torch

    digest = hashlib.blake2b(digest_size=20)
    digest.update(
        repr(
            (
                type(job.model).__module__,
                type(job.model).__qualname__,
                job.spec.name,
                tuple(job.example_input().shape),
                job.options.nhwc,
                job.input_name,
                tuple(job.output_names),
                sorted(job.options.extra.items()),
            )
        ).encode()
    )
    for key, tensor in job.model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def convert_float(job: ExportJob) -> tuple[bytes, list[int], list[str], bool]:
    """The FP32 flatbuffer of ``job.model``, NHWC output indices, decomposed ops, and whether cached."""
    key = _fingerprint(job)
    if key in _FLOAT_CACHE:
        return (*_FLOAT_CACHE[key], True)
    result = _convert_float_impl(job)
    while len(_FLOAT_CACHE) >= _FLOAT_CACHE_SIZE:
        _FLOAT_CACHE.pop(next(iter(_FLOAT_CACHE)))
    _FLOAT_CACHE[key] = result
    return (*result, False)


def _convert_float_impl(job: ExportJob) -> tuple[bytes, list[int], list[str]]:
    litert_torch = require("litert_torch", package="litert-torch", extra="tflite", purpose="TFLite export")
    x = job.example_input()
    nhwc_outputs = spatial_outputs(job.model, x)
    module = named_io_module(job.model, job.output_names, nhwc_outputs, job.options.nhwc)
    if job.options.nhwc:
        x = x.permute(0, 2, 3, 1).contiguous()
    with _decompositions() as decomposed, quiet(stderr=True):
        edge = litert_torch.convert(module, (), {job.input_name: x})
        content = edge.model_content()
    return bytes(content), nhwc_outputs, decomposed


class TFLiteExporter:
    target = "tflite"
    backend = "tflite"
    precisions = ("fp32", "fp16", "int8")
    estimator = None  # the LiteRT interpreter runs everywhere the gate runs

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        self._validate(job)
        return self._export_impl(job, workdir)

    def _validate(self, job: ExportJob) -> None:
        for module, package in (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert")):
            with quiet_native_stderr():
                require(module, package=package, extra="tflite", purpose="TFLite export")
        if job.options.precision in ("fp16", "int8"):
            require(
                "ai_edge_quantizer",
                package="ai-edge-quantizer",
                extra="tflite",
                purpose=f"TFLite {job.options.precision} export",
            )
        if job.options.dynamic_batch or job.options.dynamic_size:
            raise UsageError(
                "TFLite artifacts have a fixed input shape here (XNNPACK plans for one shape); export "
                "without --dynamic-batch / dynamic size, with --batch N and --input-size H W instead."
            )

    def _export_impl(self, job: ExportJob, workdir: Path) -> ExportResult:
        from lightdeploy.exporters.tflite import quantize

        precision = job.options.precision
        onnx_info, _ = write_onnx(job, workdir)
        t0 = time.perf_counter()
        model, nhwc_outputs, decomposed, cached = convert_float(job)
        log = {"convert_seconds": round(time.perf_counter() - t0, 2), "conversion_reused": cached}
        info: dict = {
            "onnx": onnx_info,
            "converter": {"name": "litert-torch", "from": "eager model (torch.export)", "decompositions": decomposed},
        }
        check_builtin_only(list_ops(model), job.spec.name)
        float_model = model
        t1 = time.perf_counter()
        if precision == "fp16":
            model, info["quantization"] = quantize.quantize_fp16(model)
        elif precision == "int8":
            model, info["quantization"] = quantize.quantize_int8(model, job)
        if precision != "fp32":
            log["quantize_seconds"] = round(time.perf_counter() - t1, 2)
        ops = list_ops(model)
        check_builtin_only(ops, job.spec.name)
        inputs, outputs = signature_io(model, job, nhwc_outputs)
        (workdir / TFLITE_FILE).write_bytes(model)
        info.update(
            {
                "ops": dict(sorted(ops.items())),
                "op_count": sum(ops.values()),
                "signature": SIGNATURE,
                "size_bytes": len(model),
            }
        )
        twin = None
        if precision != "fp32":

            def twin(folder: Path) -> str:
                (folder / TFLITE_FILE).write_bytes(float_model)
                return TFLITE_FILE

        return ExportResult(self.backend, TFLITE_FILE, inputs, outputs, info, log=log, float_twin=twin)
