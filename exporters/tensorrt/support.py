"""TensorRT 10's ONNX operator support, as data, plus the attribute rules that matter for these models.

Source: onnx/onnx-tensorrt ``docs/operators.md`` for **TensorRT 10.15** ("supports operators in the
inclusive range of opset 9 to opset 24"); TensorRT 10.0's copy of the same file says opset 9 to 20.
RoiAlign is parsed into the ``ROIAlign_TRT`` plugin (TensorRT's ``plugin/roiAlignPlugin``:
``coordinate_transformation_mode`` 0 = output_half_pixel, 1 = half_pixel; ``mode`` 0 = max, 1 = avg),
NonMaxSuppression into ``INMSLayer`` (TensorRT operator docs: "TopK box limit ... <= 2000 for SM 5.3
and 6.2 devices, 5000 otherwise"; the selected-indices output has a data-dependent length).

``check_node`` returns the problems of one node: ``("error", text)`` where the TensorRT ONNX parser
rejects it, ``("warning", text)`` where it parses but with a limit worth knowing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightdeploy.exporters.onnx.graph import node_attributes

SOURCE = {
    "document": "onnx/onnx-tensorrt docs/operators.md",
    "tensorrt_version": "10.15",
    "opset_range": [9, 24],
    "opset_max_by_version": {"10.0": 20, "10.15": 24},
    "plugins": {"RoiAlign": "ROIAlign_TRT (plugin/roiAlignPlugin)", "NonMaxSuppression": "INMSLayer"},
}

# Operators the table marks N (the parser has no importer for them).
UNSUPPORTED = frozenset(
    """
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit
TfIdfVectorizer Unique
""".split()
)

# Operators the table marks Y -> the restriction it states ("" where none).
SUPPORTED: dict[str, str] = {
    op: ""
    for op in """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization BlackmanWindow Cast CastLike Ceil
Celu Clip Concat ConstantOfShape Conv ConvTranspose Cos Cosh DepthToSpace Div Einsum Elu Equal Erf Exp Expand
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Identity ImageScaler
InstanceNormalization IsInf IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax LRN LpNormalization MatMul Max Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonZero Not Or Pad ParametricSoftplus Pow PRelu Range Reciprocal
Relu Reshape ReverseSequence RMSNormalization Round ScaledTanh Scan Scatter ScatterElements Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Sub Sum Tan Tanh Tile
Transpose Trilu Upsample Where Xor
""".split()
}
SUPPORTED.update(
    {
        "AveragePool": "2D or 3D pooling only; dilations empty or all ones",
        "MaxPool": "2D or 3D pooling only; the Indices output is unsupported; dilations empty or all ones",
        "LpPool": "dilations empty or all ones",
        "Constant": "sparse_value, value_string and value_strings attributes are unsupported",
        "CumSum": "axis must be a build-time constant",
        "DeformConv": "1D or 2D spatial input; begin and end pads equal per axis",
        "DequantizeLinear": "x_zero_point must be zero",
        "QuantizeLinear": "y_zero_point must be 0",
        "Dropout": "is_training must be an initializer evaluating to False",
        "EyeLike": "input must have static dimensions",
        "GridSample": "4D input only",
        "Hardmax": "the axis dimension must be a build-time constant",
        "If": "both branches' outputs must have the same rank and different names",
        "LayerNormalization": "only the first output Y is supported",
        "Loop": "scan-output length cannot be dynamic; loop-carried shapes must stay the same across iterations",
        "LSTM": "same activations both directions; input_forget = 0; layout = 0",
        "GRU": "same activations both directions",
        "RNN": "same activations both directions",
        "NonMaxSuppression": "INMSLayer: selected indices have a data-dependent length; TopK box limit 5000 (2000 on SM 5.3/6.2)",
        "OneHot": "depth must be a build-time constant",
        "RandomNormal": "seed is ignored",
        "RandomNormalLike": "seed is ignored",
        "RandomUniform": "seed is ignored",
        "RandomUniformLike": "seed is ignored",
        "Resize": "coordinate_transformation_mode half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, "
        "align_corners; mode nearest or linear (not cubic); nearest_mode floor, ceil, round_prefer_floor, "
        "round_prefer_ceil; keep_aspect_ratio_policy stretch; no antialiasing",
        "RoiAlign": "ROIAlign_TRT plugin: coordinate_transformation_mode half_pixel or output_half_pixel, mode avg or max",
        "ScatterND": "reduction must be none",
        "STFT": "frame_step and window must be initializers; real input only",
        "Squeeze": "axes must be resolvable to a constant",
        "Unsqueeze": "axes must be resolvable to a constant",
        "TopK": "sorted must be 1; K must be less than 3840",
        "Attention": "4D Q/K/V; no KV-cache inputs or outputs",
        "RotaryEmbedding": "position_ids must be INT64",
        "TensorScatter": "4D past_cache and update; axis -2",
    }
)
for _op in (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
):
    SUPPORTED[_op] = "axes must be an initializer"

# What to change in the PyTorch model when an operator is not supported.
REWRITES: dict[str, str] = {
    "Unique": "avoid data-dependent unique; use a fixed-size top-k or a one-hot sum",
    "Compress": "replace boolean-mask indexing by a multiply with the mask, or a Gather of top-k indices",
    "NonZero": "replace torch.nonzero / boolean indexing by a fixed-size top-k where the count varies",
    "MaxUnpool": "use ScatterElements (torch.scatter) or a transposed convolution",
    "MaxRoiPool": "use torchvision-style roi_align (exports to RoiAlign, the ROIAlign_TRT plugin)",
    "QLinearConv": "export QDQ (QuantizeLinear/DequantizeLinear) instead of QOperator format",
    "QLinearMatMul": "export QDQ (QuantizeLinear/DequantizeLinear) instead of QOperator format",
    "ConvInteger": "export QDQ (QuantizeLinear/DequantizeLinear) instead of integer operators",
    "MatMulInteger": "export QDQ (QuantizeLinear/DequantizeLinear) instead of integer operators",
    "DynamicQuantizeLinear": "use static (calibrated) QDQ quantisation",
    "Det": "compute the determinant in closed form for the small fixed size you need",
    "Mod": "use x - floor(x / y) * y",
    "Resize": "use F.interpolate(mode='bilinear' or 'nearest'), not bicubic or antialias=True",
    "RoiAlign": "use coordinate_transformation_mode half_pixel (aligned=True) or output_half_pixel",
    "TopK": "keep K below 3840 (e.g. a pre-selection top-k per level) and sorted=True; lightdeploy's "
    "TensorRT export splits a constant K into a chain of TopKs (exporters/tensorrt/prepare.py)",
    "NonMaxSuppression": "give it score_threshold = the lowest float32 and at most 5000 boxes; lightdeploy's "
    "TensorRT export does both exactly (exporters/tensorrt/prepare.py)",
    "MaxPool": "do not return indices (return_indices=False); use dilation 1",
    "AveragePool": "use 2D pooling with dilation 1",
    "ScatterND": "use index_put without accumulate (reduction none)",
    "If": "remove data-dependent Python branches from forward, or give both branches outputs of one rank",
    "Loop": "unroll the loop over a fixed count",
}
for _op in UNSUPPORTED:
    if _op.startswith(("Sequence", "SplitToSequence", "ConcatFromSequence", "Optional")):
        REWRITES[_op] = "return and pass tensors, not Python lists/Optionals of tensors (concat or stack them)"

RESIZE_COORD_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
ROIALIGN_COORD_MODES = {"half_pixel", "output_half_pixel"}
ROIALIGN_MODES = {"avg", "max"}
TOPK_MAX_K = 3840
NMS_TOPK_LIMIT = 5000
NMS_TOPK_LIMIT_SM53 = 2000  # SM 5.3 / 6.2: Jetson Nano, TX1, TX2
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class GraphFacts:
    """What the rules may look up about a node's graph."""

    consts: dict = field(default_factory=dict)  # name -> numpy value of initializers and Constant outputs
    used: set = field(default_factory=set)  # tensor names consumed by some node or graph output
    shapes: dict = field(default_factory=dict)  # name -> dims from shape inference (None = unknown)


def check_node(node, facts: GraphFacts, opset: int) -> list[tuple[str, str]]:
    """Problems of one node."""
    op, a = node.op_type, node_attributes(node)
    if node.domain not in STANDARD_DOMAINS:
        return [
            (
                "error",
                f"custom-domain operator {node.domain}::{op} has no TensorRT importer (it needs a "
                "TensorRT plugin of that name)",
            )
        ]
    if op in UNSUPPORTED:
        return [("error", f"{op} is not supported by the TensorRT {SOURCE['tensorrt_version']} ONNX parser")]
    if op not in SUPPORTED:
        return [("error", f"{op} is not listed in TensorRT's ONNX operator table")]
    rule = _RULES.get(op)
    return rule(node, a, facts) if rule else []


def _const_input(node, i):
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _resize(node, a, g):
    out = []
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    mode = a.get("mode", "nearest")
    if coord not in RESIZE_COORD_MODES:
        out.append(
            (
                "error",
                f"Resize coordinate_transformation_mode={coord!r} is unsupported "
                f"(supported: {', '.join(sorted(RESIZE_COORD_MODES))})",
            )
        )
    if mode not in RESIZE_MODES:
        out.append(("error", f"Resize mode={mode!r} is unsupported (nearest or linear only)"))
    if mode == "nearest" and a.get("nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST_MODES:
        out.append(("error", f"Resize nearest_mode={a['nearest_mode']!r} is unsupported"))
    if a.get("antialias", 0):
        out.append(("error", "Resize antialias=1 is unsupported"))
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        out.append(("error", f"Resize keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']!r} is unsupported"))
    if coord == "tf_crop_and_resize":
        out.append(("error", "Resize tf_crop_and_resize is unsupported"))
    return out


def _roi_align(node, a, g):
    out = []
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    if coord not in ROIALIGN_COORD_MODES:
        out.append(("error", f"RoiAlign coordinate_transformation_mode={coord!r} is unsupported"))
    if a.get("mode", "avg") not in ROIALIGN_MODES:
        out.append(("error", f"RoiAlign mode={a.get('mode')!r} is unsupported (avg or max)"))
    if a.get("sampling_ratio", 0) < 0:
        out.append(("error", "RoiAlign sampling_ratio must be >= 0"))
    out.append(
        (
            "warning",
            "RoiAlign runs as the ROIAlign_TRT plugin: load libnvinfer_plugin "
            "(trt.init_libnvinfer_plugins); batch_indices are cast to INT32",
        )
    )
    return out


def _nms(node, a, g):
    out = [
        (
            "warning",
            "NonMaxSuppression -> INMSLayer: selected_indices has a data-dependent length "
            f"and at most {NMS_TOPK_LIMIT} boxes per image are considered (2000 on SM 5.3/6.2)",
        )
    ]
    if _const_input(node, 4) is None:
        out.append(
            (
                "error",
                "NonMaxSuppression has no score_threshold: ONNX then keeps every box, but "
                "TensorRT's NMS layer applies its default ScoreThreshold 0.0 and drops boxes "
                "scoring <= 0 (logits, log-probabilities)",
            )
        )
    boxes = g.shapes.get(node.input[0])
    n = boxes[1] if boxes and len(boxes) == 3 else None
    if n is not None and n > NMS_TOPK_LIMIT:
        out.append(
            (
                "error",
                f"NonMaxSuppression over {n} boxes: TensorRT's NMS layer considers at most "
                f"{NMS_TOPK_LIMIT} (the rest are silently ignored)",
            )
        )
    elif n is not None and n > NMS_TOPK_LIMIT_SM53:
        out.append(
            (
                "warning",
                f"NonMaxSuppression over {n} boxes: on SM 5.3/6.2 devices (Jetson Nano, TX1, TX2) "
                f"TensorRT's NMS layer considers only {NMS_TOPK_LIMIT_SM53}",
            )
        )
    for i, what in ((2, "max_output_boxes_per_class"), (3, "iou_threshold"), (4, "score_threshold")):
        name = _const_input(node, i)
        if name is not None and name not in g.consts:
            out.append(
                (
                    "warning",
                    f"NonMaxSuppression {what} is computed at run time; make it a constant "
                    "(TensorRT builds it as a shape tensor)",
                )
            )
    return out


def _topk(node, a, g):
    out = []
    if a.get("sorted", 1) != 1:
        out.append(("error", "TopK sorted=0 is unsupported"))
    k = _const_input(node, 1)
    if k in g.consts and int(g.consts[k].reshape(-1)[0]) >= TOPK_MAX_K:
        out.append(("error", f"TopK K={int(g.consts[k].reshape(-1)[0])} must be less than {TOPK_MAX_K}"))
    elif k not in g.consts:
        out.append(("warning", f"TopK K is computed at run time; TensorRT needs K < {TOPK_MAX_K}"))
    return out


def _pool(node, a, g):
    out = []
    if any(d != 1 for d in a.get("dilations", [])):
        out.append(("error", f"{node.op_type} with dilations {list(a['dilations'])} is unsupported"))
    if len(a.get("kernel_shape", [0, 0])) not in (2, 3):
        out.append(("error", f"{node.op_type}: 2D or 3D pooling only"))
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] in g.used:
        out.append(("error", "MaxPool's Indices output is unsupported"))
    return out


def _scatter_nd(node, a, g):
    red = a.get("reduction", "none")
    return [] if red == "none" else [("error", f"ScatterND reduction={red!r} is unsupported")]


def _axes_input(node, a, g):
    name = _const_input(node, 1)
    if name is not None and name not in g.consts:
        return [("error", f"{node.op_type}: axes must be a constant (initializer), not computed at run time")]
    return []


def _if(node, a, g):
    then_names = {o.name for o in a["then_branch"].output}
    else_names = {o.name for o in a["else_branch"].output}
    out = [("warning", "If: a data-dependent branch; both branches are built into the engine")]
    if then_names & else_names:
        out.append(("error", "If: the branches' outputs must have different names"))
    return out


def _loop(node, a, g):
    return [("warning", "Loop: scan outputs need a static length and loop-carried shapes must not change")]


def _quant(node, a, g):
    name = _const_input(node, 2)
    if name is not None and name in g.consts and g.consts[name].any():
        return [("error", f"{node.op_type}: the zero point must be 0 (symmetric quantisation)")]
    return []


def _dropout(node, a, g):
    name = _const_input(node, 2)
    if name is not None and (name not in g.consts or bool(g.consts[name].reshape(-1)[0])):
        return [("error", "Dropout: training_mode must be a constant False")]
    return []


_RULES = {
    "Resize": _resize,
    "RoiAlign": _roi_align,
    "NonMaxSuppression": _nms,
    "TopK": _topk,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "ScatterND": _scatter_nd,
    "If": _if,
    "Loop": _loop,
    "QuantizeLinear": _quant,
    "DequantizeLinear": _quant,
    "Dropout": _dropout,
    **{op: _axes_input for op in SUPPORTED if op.startswith("Reduce")},
    "Squeeze": _axes_input,
    "Unsqueeze": _axes_input,
}


def opset_problems(opset: int) -> list[tuple[str, str]]:
    lo, hi = SOURCE["opset_range"]
    if opset < lo or opset > hi:
        return [("error", f"opset {opset} is outside TensorRT {SOURCE['tensorrt_version']}'s range {lo}-{hi}")]
    if opset > SOURCE["opset_max_by_version"]["10.0"]:
        return [("warning", f"opset {opset} needs a TensorRT 10 release newer than 10.0 (10.0 parses up to opset 20)")]
    return []
