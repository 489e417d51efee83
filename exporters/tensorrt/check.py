"""The TensorRT operator check: every ONNX node against TensorRT 10's ONNX operator support (``support.py``).

``check_onnx(model_or_path)`` checks a graph; ``check_prepared(model)`` first applies the exact rewrites
the export applies (``prepare.py``), as the export does before building.  Problems name the nn.Module
that produced the node (``exporters/onnx/graph.py``).  ``lightdeploy check MODEL --to trt`` exports the
model and runs ``check_prepared`` (``lightdeploy/checks.py``).
"""

from __future__ import annotations

from collections import Counter

from lightdeploy.errors import require
from lightdeploy.exporters.checking import CheckReport, Finding, load_checked_onnx
from lightdeploy.exporters.onnx.graph import graph_constants, node_module, static_shapes
from lightdeploy.exporters.tensorrt import support


# ----------------------------------------------------------------------------------------- checks
def check_onnx(model_or_path, *, subject: str | None = None, rewrites: list[str] | None = None) -> CheckReport:
    """Check every node (subgraphs included) of an ONNX model or file against TensorRT 10.

    ``rewrites``: what ``prepare.prepare`` changed before, reported with the findings."""
    onnx = require("onnx", package="onnx", extra="onnx", purpose="The TensorRT operator check")

    model, _, subject = load_checked_onnx(model_or_path, subject, onnx)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    findings = [Finding(sev, "(model)", "opset", "", msg) for sev, msg in support.opset_problems(opset)]
    counts: Counter = Counter()
    try:
        shapes = static_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort; the rules then see no shapes
        shapes = {}

    def walk(graph, consts):
        consts = {**consts, **graph_constants(graph)}
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        facts = support.GraphFacts(consts, used, shapes)
        for node in graph.node:
            counts[node.op_type] += 1
            for sev, msg in support.check_node(node, facts, opset):
                rewrite = support.REWRITES.get(node.op_type, "") if sev == "error" else ""
                findings.append(Finding(sev, node.name or "(unnamed)", node.op_type, node_module(node), msg, rewrite))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g, consts)
                for g in a.graphs:
                    walk(g, consts)

    walk(model.graph, {})
    return CheckReport(
        "trt",
        subject,
        opset,
        dict(support.SOURCE),
        dict(sorted(counts.items())),
        findings,
        list(rewrites or []),
        checker=f"TensorRT {support.SOURCE['tensorrt_version']} ONNX parser",
    )


def check_prepared(model, *, subject: str) -> CheckReport:
    """What the TensorRT export does before building: apply the exact rewrites of ``prepare.prepare``
    to ``model`` in place, then check it; the report lists the rewrites."""
    from lightdeploy.exporters.tensorrt.prepare import prepare

    rewrites = prepare(model)
    return check_onnx(model, subject=subject, rewrites=rewrites)
