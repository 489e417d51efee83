"""TFLite export through LiteRT's PyTorch converter (litert-torch): FP32, FP16 weights, full INT8.

Why this route: ONNX -> onnx2tf was measured silently wrong on these models' blocks, while
litert-torch converts the traced eager model exactly (design.md).  Steps:

1. ``model.onnx`` via ``export_onnx`` (kept in every artifact, design.md);
2. the eager model is wrapped so the LiteRT signature carries lightdeploy's names: the input is
   passed as keyword ``image`` and the outputs are returned as a dict keyed by the manifest's output
   names (the converter names signature I/O after kwargs and dict keys; positional args and tuples
   would come out as ``args_0`` / ``output_0``).  With ``--nhwc`` it is also wrapped in
   ``litert_torch.to_channel_last_io`` (input and every 4-D output become NHWC);
3. ``litert_torch.convert`` with every custom op replaced by its plain-tensor body from
   ``lightdeploy.ops.decomposition_table()`` (registered as pre-convert decompositions: the
   converter cannot lower a ``torch.library.custom_op``; a detector's NMS comes in the same way, as
   its op module's fixed-size DECOMPOSITION);
4. fp16 / int8: ai-edge-quantizer applied to the float flatbuffer (see ``_quantize_int8``);
5. the flatbuffer's operator list goes into the manifest; a Flex or custom op refuses the export
   (nothing is written), since a stock LiteRT interpreter on a device cannot run it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections import Counter
from pathlib import Path

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob, ExportResult
from lightdeploy.exporters.onnx import export_onnx, lightdeploy_metadata

SIGNATURE = "serving_default"  # litert-torch's default signature key; the runtime reads it by name
_DTYPES = {"float32": "float32", "float16": "float16", "int32": "int32", "int64": "int64",
           "int8": "int8", "uint8": "uint8", "bool": "bool"}


class UnsupportedOpsError(UsageError):
    """The converted model still contains ops a stock LiteRT interpreter has no kernel for."""


# ------------------------------------------------------------------------------------- op listing
def list_ops(model: bytes) -> dict[str, int]:
    """{operator name: count} over every subgraph of a .tflite flatbuffer.

    Builtins are named as in the schema (``CONV_2D``); custom ops as ``CUSTOM:<custom_code>``
    (a TF-Select op is ``CUSTOM:Flex<TFOp>``).  Read from the flatbuffer itself, so it works on a
    model no interpreter can open.
    """
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    root = schema.Model.GetRootAsModel(model, 0)
    codes = []
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        # Builtins above 127 are stored in BuiltinCode; older files only in DeprecatedBuiltinCode.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append("CUSTOM:" + (custom.decode() if custom else "?"))
        else:
            codes.append(names.get(builtin, f"BUILTIN_{builtin}"))
    counts: Counter = Counter()
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            counts[codes[graph.Operators(o).OpcodeIndex()]] += 1
    return dict(counts)


def check_builtin_only(ops: dict[str, int], model_name: str = "the model") -> None:
    """Refuse an op list with Flex (TF Select) or other custom ops: devices run builtins only."""
    bad = sorted(op for op in ops if op.startswith("CUSTOM:") or op in ("CUSTOM", "DELEGATE"))
    if bad:
        flex = [op for op in bad if op.startswith("CUSTOM:Flex")]
        kind = "Flex (TensorFlow Select)" if flex else "custom"
        raise UnsupportedOpsError(
            f"The TFLite conversion of {model_name} contains {kind} op(s) {', '.join(bad)}, which a "
            "stock LiteRT interpreter cannot run; nothing was written. Give the op a plain-tensor "
            "decomposition (DECOMPOSITIONS in its lightdeploy/ops module) made of builtin-convertible "
            "torch ops, or export to another target."
        )


# ------------------------------------------------------------------------------------ conversion
def named_io_module(model, output_names: tuple[str, ...], nhwc_outputs: list[int], nhwc: bool):
    """The module that is converted: one keyword input, dict outputs keyed by the manifest names."""
    import torch

    inner = model
    if nhwc:
        import litert_torch

        inner = litert_torch.to_channel_last_io(model, args=[0], outputs=nhwc_outputs)

    class NamedOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, image):
            result = self.inner(image)
            result = result if isinstance(result, (tuple, list)) else (result,)
            return dict(zip(output_names, result))

    return NamedOutputs().eval()


@contextlib.contextmanager
def _decompositions():
    """Register lightdeploy's op decompositions with litert-torch for one conversion, then restore."""
    from litert_torch.fx_infra import decomp

    from lightdeploy.ops import decomposition_table

    table = decomposition_table()
    current = decomp.pre_convert_decomp()
    before = {op: current.get(op) for op in table}
    for op, fn in table.items():
        decomp.add_pre_convert_decomp(op, fn)
    try:
        yield [str(op) for op in table]
    finally:
        for op, fn in before.items():
            if fn is None:
                decomp.remove_pre_lower_decomp(op)
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
    digest.update(repr((type(job.model).__module__, type(job.model).__qualname__, job.spec.name,
                        tuple(job.example_input().shape), job.options.nhwc, job.input_name,
                        tuple(job.output_names), sorted(job.options.extra.items()))).encode())
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
    import torch

    litert_torch = require("litert_torch", package="litert-torch", extra="tflite", purpose="TFLite export")
    x = job.example_input()
    nhwc_outputs: list[int] = []
    if job.options.nhwc:
        # Spatial maps (4-D outputs, e.g. segmentation logits) go channel-last too; boxes, scores
        # and masks have no channel axis and stay as they are.
        with torch.no_grad():
            probe = job.model(x)
        probe = probe if isinstance(probe, (tuple, list)) else (probe,)
        nhwc_outputs = [i for i, t in enumerate(probe) if t.dim() == 4]
    module = named_io_module(job.model, job.output_names, nhwc_outputs, job.options.nhwc)
    if job.options.nhwc:
        x = x.permute(0, 2, 3, 1).contiguous()
    with _decompositions() as decomposed, _quiet():
        edge = litert_torch.convert(module, (), {job.input_name: x})
        content = edge.model_content()
    return bytes(content), nhwc_outputs, decomposed


def _quantize_fp16(model: bytes) -> tuple[bytes, dict]:
    """FP16 weights (ai-edge-quantizer FLOAT_CASTING via litert-torch's own ``full_fp16_recipe``).

    Applied to the float flatbuffer: this is exactly what ``convert(quant_config=full_fp16_recipe())``
    does after converting, and it spares a second conversion.  Activations stay FP32 on CPU.
    """
    from litert_torch.generative.quantize import quant_recipes
    from litert_torch.quantize import translate_recipe

    recipe = translate_recipe.translate_to_ai_edge_recipe(quant_recipes.full_fp16_recipe().generative_recipe)
    with _quiet():
        out = translate_recipe.quantize_model(model, recipe)
    return bytes(out), {"quantizer": "ai-edge-quantizer", "recipe": "litert-torch full_fp16_recipe "
                        "(FLOAT_CASTING: fp16 weights, fp32 activations)"}


# Full-integer static quantisation: ai-edge-quantizer's static_wi8_ai8 (int8 per-channel symmetric
# weights, int8 per-tensor asymmetric activations, min/max calibration) with INPUT and OUTPUT left
# unquantised, so the artifact has float I/O and QUANTIZE / DEQUANTIZE only at the edges (and at
# concatenations of differently-scaled inputs).  Chosen over litert-torch's PT2E quantiser by
# measurement (224x224, XNNPACK 2 threads, same calibration set, worst-input cosine to eager):
#   mobilenetv2  aeq 4.1 ms, 0.93 | PT2E 164 ms, 0.96 | fp32 6.0 ms
#   shufflenetv2 aeq 6.3 ms, 0.87 | PT2E  50 ms, 0.96 | fp32 7.1 ms
# PT2E took 100-200 s more to convert and either made the model input INT8 (with its quant_config)
# or, without it, left 130-155 float QUANTIZE/DEQUANTIZE pairs (fake-quant: slower than fp32).
# Keeping any one op type in float (INT8_FLOAT_OPS) moved mobilenetv2's cosine at 64x64 by at most
# 0.03 (0.68 -> 0.71): the loss is spread over the depth of these random-weight nets, not one op.
# (All measured before factory.RANDOM_BN_SHIFT, on BN beta = 0 weights; with it, mobilenetv2 int8 at
# 224x224 is at cosine 0.9988, snet49 0.9983.)
# Segmenters: their int8 did not run at all until ``_retarget_signature_outputs`` (see there).  With it,
# at the tests' sizes (worst-input logits cosine / mask pixels pooled over the gate's inputs; int8 row
# 0.98 / 0.95), calibration ranges moving-average (aeq's default) -> global min/max (``_quantize_int8``):
#   bisenet_xception39 64x64 0.9817 / 0.920 -> 0.9956 / 0.959, bisenet_resnet18 0.9822 / 0.911 ->
#   0.9951 / 0.952: the mask failed, now passes (ResNet18 with little margin);
#   dfanet_a 128x128 0.9956 / 0.982 -> 0.9986 / 0.988, dfanet_b 0.9935 / 0.968 -> 0.9982 / 0.971;
#   classifiers at 224x224 (top-1 1.0 both): mobilenetv2 0.9988 -> 0.9992, shufflenetv2 0.9980 -> 0.9994.
# The moving average (0.95) weighs the first batches most, so wider ranges of later batches were clipped.
# With it, keeping one op type float (MEAN, MUL+LOGISTIC, RESIZE_BILINEAR, CONCATENATION, ADD,
# DEPTHWISE_CONV_2D) or the FFM / head / ARMs / one backbone stage float had moved BiSeNet's mask by
# < 0.025, and int16 activations (static_wi8_ai16) to 0.927 at 40x the latency.
INT8_FLOAT_OPS: tuple[str, ...] = ()
# Detectors: int8 covers the network (backbone, CEM, RPN, SAM, thin map, R-CNN head); the box
# arithmetic stays float, as in TFLite's own SSD models (TFLite_Detection_PostProcess is float): the
# proposal and detection layers (decode, clip, top-k, NMS) and the ops the detector's forward runs
# itself between them (anchors, PSRoIAlign's sample coordinates and bilinear sampling).  Matched on the
# op's scope, which ai-edge-quantizer builds from its output tensor names (``get_op_scope``: the names
# joined by ";", plus a trailing ";"); litert-torch names a tensor after the module path under
# ``named_io_module``'s wrapper, so an op of the detector's own forward has the scope
# "<wrapper>/<detector class>_inner;N;" (or "..._inner;": no module below the detector's root).
# Why: int8 box coordinates over 320 px would step by 1.25 px, and quantised everything, thundernet_snet49
# was refused at export (LiteRT "div.cc:262 data[i] != zero_point ... DIV failed to invoke": the int8 DIV
# of NMS's IoU rejects a zero divisor, which empty boxes give).
# The root-level regex once ended in "(;\d+)?$" and matched no scope: PSRoIAlign ran in int8 (RoI
# corners at 1.25 px steps, bilinear weights at 1/510), TFLite's own int8 loss (helper-measured,
# thundernet_snet49 at 320x320, box match F1; eager + one int8 step of noise per conv/linear 0.677,
# OpenVINO 0.668): PSRoIAlign int8 0.356 -> float 0.682 (ops with an int8 output 299 -> 234 of ~21.6k);
# its coordinate ops alone float 0.681, its feature sampling alone 0.363.  With it float, keeping more
# float moves little (R-CNN head 0.681, SAM 0.688, CEM 0.685, all after the backbone 0.690; eager,
# noise on the backbone only: 0.705): the rest is the backbone's rounding.
DETECTOR_FLOAT_SCOPES: tuple[str, ...] = (r"(ProposalLayer|DetectionLayer)_", r"^([^/]+/[^/]+_inner(;\d+)?;)+$")


def _quantize_int8(model: bytes, job: ExportJob) -> tuple[bytes, dict]:
    from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    from lightdeploy.calibration import calibration_set

    calib = calibration_set(job.preprocessing(), batch=job.options.batch, calib_dir=job.options.calib_dir)
    names = qtyping.TFLOperationName
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(".*", names.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    no_quant = algorithm_manager.AlgorithmName.NO_QUANTIZE
    for op in ("INPUT", "OUTPUT", *INT8_FLOAT_OPS):
        manager.add_quantization_config(".*", names(op), algorithm_key=no_quant)
    float_scopes = DETECTOR_FLOAT_SCOPES if job.spec.task == "detect" else ()
    for regex in float_scopes:  # the last matching scope wins (RecipeManager.get_quantization_configs)
        manager.add_quantization_config(regex, names.ALL_SUPPORTED, algorithm_key=no_quant)
    q = quantizer.Quantizer(model)
    q.load_quantization_recipe(manager.get_quantization_recipe())
    t0 = time.perf_counter()
    with _quiet():
        # Quantizer.calibrate without its default moving-average update (0.95 smoothing: ranges mostly the
        # first batches', later outliers clipped): global min / max over the set, as NNCF on OpenVINO.
        # Same steps as Quantizer.calibrate otherwise; ``manager`` holds the recipe just loaded into q.
        calib_run = calibrator.Calibrator(model, num_threads=os.cpu_count() or 1,
                                          qsv_update_func=qsv_utils.min_max_update)
        calib_run.calibrate({SIGNATURE: [{job.input_name: b} for b in calib.batches]}, manager)
        out = q.quantize(calib_run.get_model_qsvs(), enable_progress_report=False).quantized_model
    out, retargeted = _retarget_signature_outputs(bytes(out))
    return out, {
        "quantizer": "ai-edge-quantizer",
        "recipe": "static_wi8_ai8 (min/max; int8 per-channel weights, int8 per-tensor activations), "
                  "float input/output",
        "ranges": "global min/max over the calibration set (qsv_utils.min_max_update)",
        "float_op_types": list(INT8_FLOAT_OPS),
        "float_scopes": list(float_scopes),
        "signature_outputs_retargeted": retargeted,
        "calibration": {**calib.description, "batches": len(calib), "seconds": round(time.perf_counter() - t0, 2)},
    }


def _retarget_signature_outputs(model: bytes) -> tuple[bytes, list[str]]:
    """Point signature outputs left on a pre-DEQUANTIZE tensor at the graph output that replaced it.

    ai-edge-quantizer 0.10 renames a float output it dequantises (``X`` -> ``X_dequant``) in the
    subgraph's output list, but re-points the SignatureDef only when the DEQUANTIZE feeds the graph
    output alone (model_modifier ``_has_transform_before_output``: consumers == [-1]).  A segmenter's
    ``logits`` also feed its ``mask`` ARG_MAX (kept float, so it reads the same DEQUANTIZE), so the
    ``logits`` signature entry kept the int8 tensor inside the graph: XNNPACK fuses it away ("Tensor
    data is null" in the signature runner), and without a delegate it would return raw int8 codes.
    Patched in place (the uint32 ``tensorIndex`` field of the TensorMap table); returns the names fixed.
    """
    import struct

    from ai_edge_litert import schema_py_generated as schema

    buf = bytearray(model)
    root = schema.Model.GetRootAsModel(buf, 0)
    fixed = []
    for s in range(root.SignatureDefsLength()):
        sig = root.SignatureDefs(s)
        graph = root.Subgraphs(sig.SubgraphIndex())
        outputs = {graph.Tensors(int(i)).Name(): int(i) for i in graph.OutputsAsNumpy()}
        for j in range(sig.OutputsLength()):
            entry = sig.Outputs(j)
            if entry.TensorIndex() in outputs.values():
                continue
            target = outputs.get(graph.Tensors(entry.TensorIndex()).Name() + b"_dequant")
            field = entry._tab.Offset(6)  # TensorMap.tensorIndex; absent only when it is 0 (default)
            if target is None or not field:
                continue  # nothing to re-point to; signature_io's test run refuses the model if it fails
            struct.pack_into("<I", buf, entry._tab.Pos + field, target)
            fixed.append(entry.Name().decode())
    return bytes(buf), fixed


# ------------------------------------------------------------------------------------- I/O entries
def signature_io(model: bytes, job: ExportJob, nhwc_outputs: list[int]) -> tuple[list[dict], list[dict]]:
    """Manifest input/output entries, read back from the converted model's signature."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    sigs = interp.get_signature_list()
    if SIGNATURE not in sigs:
        raise RuntimeError(f"converted model lacks signature {SIGNATURE!r} (has {sorted(sigs)})")
    runner = interp.get_signature_runner(SIGNATURE)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    try:  # one run proves the rewritten graph executes (e.g. ai-edge-quantizer output on segmenters)
        runner(**{n: np.zeros(d["shape"], d["dtype"]) for n, d in ins.items()})
    except (ValueError, RuntimeError) as exc:
        raise UsageError(
            f"The {job.options.precision} TFLite model of {job.spec.name} does not run in the LiteRT "
            f"interpreter ({exc}); nothing was written. Export another precision or target."
        ) from None
    missing = [n for n in (job.input_name, *job.output_names) if n not in ins and n not in outs]
    if missing:
        raise RuntimeError(f"converted signature lacks {missing}: inputs {list(ins)}, outputs {list(outs)}")

    def entry(name, detail, layout=None):
        dtype = getattr(detail["dtype"], "__name__", str(detail["dtype"]))
        e = {"name": name, "shape": [int(d) for d in detail["shape"]], "dtype": _DTYPES.get(dtype, dtype)}
        if layout:
            e["layout"] = layout
        return e

    layout = "NHWC" if job.options.nhwc else "NCHW"
    inputs = [entry(job.input_name, ins[job.input_name], layout)]
    outputs = [entry(n, outs[n], "NHWC" if i in nhwc_outputs else None) for i, n in enumerate(job.output_names)]
    return inputs, outputs


@contextlib.contextmanager
def _quiet():
    """litert-torch prints a progress tree and absl/TF logs; lightdeploy shows its own progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------------------- exporter
class TFLiteExporter:
    target = "tflite"
    backend = "tflite"
    precisions = ("fp32", "fp16", "int8")

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        self._validate(job)
        return self._export_impl(job, workdir)

    def _validate(self, job: ExportJob) -> None:
        for module, package in (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert")):
            require(module, package=package, extra="tflite", purpose="TFLite export")
        if job.options.precision in ("fp16", "int8"):
            require("ai_edge_quantizer", package="ai-edge-quantizer", extra="tflite",
                    purpose=f"TFLite {job.options.precision} export")
        if job.options.dynamic_batch or job.options.dynamic_size:
            raise UsageError(
                "TFLite artifacts have a fixed input shape here (XNNPACK plans for one shape); export "
                "without --dynamic-batch / dynamic size, with --batch N and --input-size H W instead."
            )

    def _export_impl(self, job: ExportJob, workdir: Path) -> ExportResult:
        precision = job.options.precision
        onnx_info = export_onnx(job, workdir / "model.onnx", metadata=lightdeploy_metadata(job))
        t0 = time.perf_counter()
        model, nhwc_outputs, decomposed, cached = convert_float(job)
        info: dict = {"onnx": onnx_info,
                      "converter": {"name": "litert-torch", "from": "eager model (torch.export)",
                                    "seconds": round(time.perf_counter() - t0, 2), "reused": cached,
                                    "decompositions": decomposed}}
        check_builtin_only(list_ops(model), job.spec.name)
        float_model = model
        if precision == "fp16":
            model, info["quantization"] = _quantize_fp16(model)
        elif precision == "int8":
            model, info["quantization"] = _quantize_int8(model, job)
        ops = list_ops(model)
        check_builtin_only(ops, job.spec.name)
        inputs, outputs = signature_io(model, job, nhwc_outputs)
        (workdir / "model.tflite").write_bytes(model)
        info.update({"ops": dict(sorted(ops.items())), "op_count": sum(ops.values()),
                     "signature": SIGNATURE, "size_bytes": len(model)})
        twin = None if precision == "fp32" else lambda folder: (folder / "model.tflite").write_bytes(float_model)
        return ExportResult(self.backend, "model.tflite", inputs, outputs, info, float_twin=twin)


EXPORTER = TFLiteExporter()
