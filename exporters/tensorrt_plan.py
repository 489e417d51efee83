"""The TensorRT build plan: what is decided on any machine, before the engine is built on the GPU.

- FP16 safety: eager forward hooks record each module's max |activation| on the calibration images;
  modules within ``FP16_MARGIN`` of the FP16 range (65504) are pinned to FP32, mapped to the ONNX
  nodes they produced (dynamo name scopes), plus the nodes that read their outputs; and the
  post-processing tail after the last Conv/Gemm (box decoding, top-k, NMS) is kept in FP32.
- INT8: explicit quantisation, as TensorRT 10 recommends: a QDQ ONNX from ONNX Runtime's
  ``quant_pre_process`` + ``quantize_static`` (QDQ, symmetric INT8 activations and per-channel weights,
  biases left in float: TensorRT dequantises INT8/FP8/INT4 only, not ONNX Runtime's INT32 biases).
- CPU parity estimates: FP32 = the TensorRT-ready ONNX in ONNX Runtime; FP16 = that ONNX converted to
  float16 with the pinned nodes kept in float32, in ONNX Runtime; INT8 = the QDQ ONNX in ONNX Runtime.
  Judged against the tensorrt rows of the tolerance table and marked as estimated.
- The plan file (``trt_plan.json``): builder settings, profiles, pinned layers, commands to run.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightdeploy.parity.report import ParityReport

PLAN_FILE = "trt_plan.json"
PLAN_FORMAT = "lightdeploy-tensorrt-plan"
PLAN_VERSION = 1
ONNX_FILE = "model.onnx"
QDQ_FILE = "model.qdq.onnx"
ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"
WORKSPACE_BYTES = 1 << 30
MAX_DYNAMIC_BATCH = 8

FP16_MAX = 65504.0
# Pin a layer to FP32 when its max |activation| on the calibration images reaches FP16_MAX / 16
# (4094): 60 images underestimate what deployment inputs reach (4 bits of headroom), and inside a
# layer the FP16 accumulators and reductions (conv sums, GlobalAveragePool, ReduceMean before the
# divide) see values larger than the layer's output.
FP16_MARGIN = 16.0
FP16_LIMIT = FP16_MAX / FP16_MARGIN
FP16_REASON = (f"pinned when max |activation| >= {FP16_LIMIT:.0f} = 65504 / {FP16_MARGIN:g}: the calibration "
               "images underestimate deployment maxima, and FP16 accumulators/reductions inside a layer exceed "
               "its output; readers of a pinned tensor are pinned too, so it is never cast back to FP16")
QUANT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# --------------------------------------------------------------------------------- FP16 analysis
def activation_ranges(model, batches) -> dict[str, float]:
    """{module path ('' = root): max |output| over ``batches``}, by forward hooks on every module."""
    import torch

    ranges: dict[str, float] = {}

    def biggest(value) -> float:
        if isinstance(value, torch.Tensor):
            return float(value.detach().abs().max()) if value.is_floating_point() and value.numel() else 0.0
        if isinstance(value, (tuple, list)):
            return max((biggest(v) for v in value), default=0.0)
        if isinstance(value, dict):
            return max((biggest(v) for v in value.values()), default=0.0)
        return 0.0

    def hook(name):
        def record(module, args, output):
            ranges[name] = max(ranges.get(name, 0.0), biggest(output))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()]
    try:
        with torch.no_grad():
            for x in batches:
                model(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        for h in handles:
            h.remove()
    return ranges


def fp16_pins(onnx_model, ranges: dict[str, float], limit: float = FP16_LIMIT) -> dict:
    """The ONNX nodes to keep in FP32: those whose innermost producing module is at risk, and their readers."""
    from lightdeploy.trtcheck import node_module, node_module_path, node_scopes

    risky = {path: v for path, v in ranges.items() if v >= limit}
    nodes = list(onnx_model.graph.node)
    mapped = sum(1 for n in nodes if node_scopes(n))
    pinned: dict[str, dict] = {}
    for node in nodes:
        path = node_module_path(node)
        if path in risky and node.name:
            pinned[node.name] = {"node": node.name, "op_type": node.op_type, "module": node_module(node),
                                 "max_abs": risky[path], "why": "output"}
    produced = {out: n.name for n in nodes if n.name in pinned for out in n.output}
    for node in nodes:
        if node.name and node.name not in pinned:
            reads = [produced[i] for i in node.input if i in produced]
            if reads:
                pinned[node.name] = {"node": node.name, "op_type": node.op_type, "module": node_module(node),
                                     "max_abs": max(pinned[r]["max_abs"] for r in reads), "why": f"reads {reads[0]}"}
    for node in tail_nodes(onnx_model):
        if node.name not in pinned:
            pinned[node.name] = {"node": node.name, "op_type": node.op_type, "module": node_module(node),
                                 "max_abs": None, "why": TAIL_REASON}
    top = sorted(ranges.items(), key=lambda kv: -kv[1])[:10]
    return {
        "limit": limit, "margin": FP16_MARGIN, "fp16_max": FP16_MAX, "reason": FP16_REASON,
        "tail_nodes": sum(1 for p in pinned.values() if p["why"] == TAIL_REASON),
        "risky_modules": [{"module": p or "(root)", "max_abs": v} for p, v in sorted(risky.items(), key=lambda kv: -kv[1])],
        "largest_activations": [{"module": p or "(root)", "max_abs": v} for p, v in top],
        "layers": list(pinned.values()),
        "nodes_with_module_path": f"{mapped}/{len(nodes)}",
    }


TAIL_REASON = "post-processing tail (no Conv/Gemm/MatMul after it): box decoding, top-k and NMS stay exact in FP32"
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def tail_nodes(onnx_model) -> list:
    """Nodes after the network's last compute layer on every path to the outputs (decode, top-k, NMS...).

    In FP16 their rounding moves box corners by up to 0.25 px at 320 px and reorders near-tied scores;
    they are cheap, so the plan keeps them in FP32.  Classifiers (Gemm last) have no tail.
    """
    nodes = list(onnx_model.graph.node)
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_compute: dict[str, bool] = {}

    def reaches_compute(node) -> bool:
        if node.name in feeds_compute:
            return feeds_compute[node.name]
        feeds_compute[node.name] = False  # cycles cannot occur in ONNX graphs; guards recursion
        result = any(c.op_type in COMPUTE_OPS or reaches_compute(c)
                     for out in node.output for c in consumers.get(out, []))
        feeds_compute[node.name] = result
        return result

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(nodes) + 100))
    try:
        has_compute = any(n.op_type in COMPUTE_OPS for n in nodes)
        return [n for n in nodes if has_compute and n.op_type not in COMPUTE_OPS and n.name
                and not reaches_compute(n) and any(_produces_float(n, o) for o in n.output)]
    finally:
        sys.setrecursionlimit(limit)


def _produces_float(node, output: str) -> bool:
    return node.op_type not in ("Shape", "Size", "ArgMax", "ArgMin", "NonMaxSuppression", "NonZero", "Equal",
                                "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or")


def fp16_onnx(onnx_model, pinned_nodes: list[str]):
    """FP16 emulation of the graph as TensorRT runs it with the plan's pins: every float tensor written
    by a non-pinned node (and the input, when a non-pinned node reads it) is rounded through float16
    with a Cast pair, and the weights of non-pinned nodes are rounded to float16; compute stays float32.

    ONNX Runtime's float16 converter is not used: on CPU its inserted casts run whole fp16 regions in
    float32, so activations were never rounded and overflows never showed.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx_model)
    graph = model.graph
    floats = {v.name for v in [*graph.value_info, *graph.input, *graph.output]
              if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    pinned = set(pinned_nodes)
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)

    def rounds(name):
        return any(r not in pinned for r in readers.get(name, []))

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and rounds(init.name):
            value = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value, init.name))

    def cast_pair(src, dst):
        half = f"{dst}__fp16"
        return [helper.make_node("Cast", [src], [half], to=TensorProto.FLOAT16, name=f"{dst}__to_fp16"),
                helper.make_node("Cast", [half], [dst], to=TensorProto.FLOAT, name=f"{dst}__to_fp32")]

    nodes = []
    renamed = {}
    for inp in graph.input:
        if inp.name in floats and rounds(inp.name):
            renamed[inp.name] = f"{inp.name}__fp16_rounded"
            nodes += cast_pair(inp.name, renamed[inp.name])
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        casts = []
        if node.name not in pinned:
            for k, out in enumerate(node.output):
                if out in floats:
                    node.output[k] = f"{out}__fp32"
                    casts += cast_pair(node.output[k], out)
        nodes += [node, *casts]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


# ---------------------------------------------------------------------------------------- INT8 QDQ
def _reader(input_name: str, batches):
    """An onnxruntime.quantization.CalibrationDataReader over the calibration batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = [{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches]
            self._items = iter(self._feeds)

        def get_next(self):
            return next(self._items, None)

        def rewind(self):
            self._items = iter(self._feeds)

    return Reader()


def make_qdq(onnx_path: Path, qdq_path: Path, input_name: str, batches, workdir: Path) -> dict:
    """Write the explicit-quantisation (QDQ) model TensorRT builds INT8 engines from."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / ".model.pre.onnx"
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    reader = _reader(input_name, batches)
    try:
        quantize_static(
            str(pre), str(qdq_path), reader, quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANT_OPS),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    finally:
        pre.unlink(missing_ok=True)
        for leftover in workdir.glob("*augmented*.onnx"):
            leftover.unlink()
    import onnx

    qdq = onnx.load(str(qdq_path))
    counts = {op: sum(1 for n in qdq.graph.node if n.op_type == op) for op in ("QuantizeLinear", "DequantizeLinear")}
    return {
        "file": qdq_path.name, "tool": "onnxruntime.quantization.quantize_static after quant_pre_process",
        "format": "QDQ", "activations": "INT8 symmetric, per tensor (MinMax calibration)",
        "weights": "INT8 symmetric, per channel", "bias": "float (not quantised)",
        "quantized_op_types": list(QUANT_OPS), "calibration_batches": len(batches), **counts,
    }


# ------------------------------------------------------------------------------ parity estimates
@dataclass
class EstimatedParityReport(ParityReport):
    """A parity report computed on the CPU in place of the engine, which is built on the target."""

    method: str = ""
    estimated: bool = True

    def as_dict(self) -> dict:
        return {**super().as_dict(), "estimated": True, "method": self.method}

    def summary(self) -> str:
        return super().summary().replace("parity ", "parity ESTIMATED on the CPU: ", 1)


ESTIMATE_METHODS = {
    "fp32": "the TensorRT-ready model.onnx in ONNX Runtime (CPU) vs eager",
    "fp16": "model.onnx with the weights and every tensor of the non-pinned nodes rounded to float16 (the pinned "
            "FP32 layers left in float32), run in ONNX Runtime (CPU) vs eager: FP16 storage, rounding and overflow "
            "are modelled; FP16 accumulation inside TensorRT kernels is not",
    "int8": "the QDQ model.qdq.onnx (the engine's source) in ONNX Runtime (CPU) vs eager",
}


class _OrtRunner:
    def __init__(self, model_or_path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
        self._session = ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        self._names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds):
        return dict(zip(self._names, self._session.run(self._names, feeds)))


def estimate_runner(folder: Path, precision: str, plan: dict):
    import onnx

    if precision == "int8":
        return _OrtRunner(folder / QDQ_FILE)
    if precision == "fp16":
        pinned = [p["node"] for p in plan.get("fp32_layers", [])]
        return _OrtRunner(fp16_onnx(onnx.load(str(folder / ONNX_FILE)), pinned))
    return _OrtRunner(folder / ONNX_FILE)


def estimate(folder: Path, precision: str, *, model, images=None, manifest: dict | None = None,
             plan: dict | None = None) -> EstimatedParityReport:
    """The CPU estimate of one precision's parity, judged by the tensorrt/<precision> tolerance row."""
    from lightdeploy.parity.gate import compare, run_artifact, run_eager
    from lightdeploy.parity.inputs import parity_inputs, to_batches
    from lightdeploy.parity.tolerances import tolerance_for
    from lightdeploy.runtimes.manifest import read_manifest

    folder = Path(folder)
    manifest = manifest or read_manifest(folder, verify=False)
    plan = plan or read_plan(folder)
    inputs = parity_inputs(manifest, images)
    batches = to_batches(inputs, manifest["inputs"][0]["shape"][0])
    names = [o["name"] for o in manifest["outputs"]]
    eager = run_eager(model, batches, names, manifest["preprocessing"].get("layout", "NCHW"))
    got = run_artifact(estimate_runner(folder, precision, plan), batches, manifest)
    view = {**manifest, "backend": "tensorrt", "precision": precision}
    report = compare(eager, got, view, tolerance_for("tensorrt", precision), [p.name for p in inputs],
                     artifact_name=folder.name)
    fields = {k: getattr(report, k) for k in ParityReport.__dataclass_fields__}
    fields["notes"] = list(report.notes) + [f"estimated on the CPU: {ESTIMATE_METHODS[precision]}; the engine is "
                                            "built and gated on the GPU machine by `lightdeploy build`"]
    return EstimatedParityReport(**fields, method=ESTIMATE_METHODS[precision])


def compact(report: ParityReport) -> dict:
    """A short form of a report for the plan file."""
    return {"passed": report.passed, "precision": report.precision, "outputs": report.outputs,
            "task": report.task_info, "failures": [c.as_dict() for c in report.failures()],
            "method": getattr(report, "method", "")}


# ------------------------------------------------------------------------------------ plan file
def profiles(inputs: list[dict], options) -> list[dict]:
    """Optimisation profiles for dynamic dims: batch 1..MAX_DYNAMIC_BATCH (opt: the export batch);
    H, W from half to twice the export size (opt: the export size)."""
    profile = {}
    for entry in inputs:
        shape = entry["shape"]
        if all(isinstance(d, int) for d in shape):
            continue
        lo, opt, hi = [], [], []
        for axis, d in enumerate(shape):
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
            elif axis == 0:
                lo.append(1), opt.append(max(1, options.batch)), hi.append(max(MAX_DYNAMIC_BATCH, options.batch))
            else:
                size = options.input_size[axis - 2] if axis in (2, 3) else 1
                lo.append(max(1, size // 2)), opt.append(size), hi.append(size * 2)
        profile[entry["name"]] = {"min": lo, "opt": opt, "max": hi}
    return [profile] if profile else []


def builder_settings(precision: str, pinned: list[str]) -> dict:
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[precision]
    if precision == "fp16" and pinned:
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    return {"flags": flags, "workspace_bytes": WORKSPACE_BYTES, "builder_optimization_level": 3,
            "timing_cache": TIMING_CACHE_FILE, "engine": ENGINE_FILE,
            "layer_precisions": {name: "fp32" for name in pinned}}


def trtexec_command(plan: dict) -> str:
    """The ``trtexec`` line equivalent to ``lightdeploy build`` (run inside the artifact folder)."""
    b = plan["builder"]
    args = ["trtexec", f"--onnx={plan['onnx']}", f"--saveEngine={b['engine']}",
            f"--timingCacheFile={b['timing_cache']}", f"--memPoolSize=workspace:{b['workspace_bytes'] >> 20}M",
            f"--builderOptimizationLevel={b['builder_optimization_level']}"]
    for flag in b["flags"]:
        args += {"FP16": ["--fp16"], "INT8": ["--int8"], "OBEY_PRECISION_CONSTRAINTS": ["--precisionConstraints=obey"]}[flag]
    if b["layer_precisions"]:
        spec = ",".join(f"{name}:fp32" for name in b["layer_precisions"])
        args += [f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
    for profile in plan["profiles"]:
        for key, opt in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            args.append(opt + "=" + ",".join(f"{n}:{'x'.join(map(str, s[key]))}" for n, s in profile.items()))
    return " ".join(shlex.quote(a) for a in args)


def artifact_dir_hint(workdir: Path) -> str:
    """The artifact's final folder: the pipeline stages it in '.NAME.tmp-XXXX' beside it."""
    name = workdir.name
    if name.startswith(".") and ".tmp-" in name:
        return str(workdir.parent / name[1:].split(".tmp-")[0])
    return str(workdir)


@dataclass
class Plan:
    data: dict = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        (Path(folder) / PLAN_FILE).write_text(json.dumps(self.data, indent=2, default=float))


def read_plan(folder: Path) -> dict:
    from lightdeploy.errors import ArtifactError

    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise ArtifactError(f"{str(folder)!r} holds no TensorRT build plan ({PLAN_FILE}); re-export with --to trt.")
    plan = json.loads(path.read_text())
    if plan.get("format") != PLAN_FORMAT or plan.get("version") != PLAN_VERSION:
        raise ArtifactError(f"{str(path)!r} is not a version-{PLAN_VERSION} lightdeploy TensorRT plan; re-export.")
    return plan


def update_plan(folder: Path, **changes) -> dict:
    plan = read_plan(folder)
    plan.update(changes)
    Plan(plan).write(folder)
    return plan
