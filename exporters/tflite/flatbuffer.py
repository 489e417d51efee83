"""Reading and patching .tflite flatbuffers: the operator list, the builtin-only check, the signature's
I/O entries, and a SignatureDef fix after quantisation.  Works on bytes, without converting anything.
"""

from __future__ import annotations

from collections import Counter

from lightdeploy.errors import UsageError
from lightdeploy.exporters.base import ExportJob

SIGNATURE = "serving_default"  # litert-torch's default signature key; the runtime reads it by name


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


def retarget_signature_outputs(model: bytes) -> tuple[bytes, list[str]]:
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
        e = {"name": name, "shape": [int(d) for d in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name}
        if layout:
            e["layout"] = layout
        return e

    def output_entry(i, name):
        if i not in nhwc_outputs:
            return entry(name, outs[name])
        if job.options.nhwc:  # the caller asked for channel-last maps
            return entry(name, outs[name], "NHWC")
        # channel-last in the file only: the manifest gives the NCHW shape the runtime returns
        e = entry(name, outs[name], "NCHW")
        n, h, w, c = e["shape"]
        e["shape"], e["file_layout"] = [n, c, h, w], "NHWC"
        return e

    layout = "NHWC" if job.options.nhwc else "NCHW"
    inputs = [entry(job.input_name, ins[job.input_name], layout)]
    outputs = [output_entry(i, n) for i, n in enumerate(job.output_names)]
    return inputs, outputs
