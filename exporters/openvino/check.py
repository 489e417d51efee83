"""The OpenVINO operator check: a conversion attempt with OpenVINO's own ONNX frontend, then the CPU
plugin's own list of what it runs.

- ``FrontEnd.convert_partially`` converts what it can and leaves every ONNX op it has no conversion
  rule for as a framework node: each is an error, named with the nn.Module behind the ONNX node;
- a fully converted model is put to the CPU plugin (``Core.query_model``): an op it does not claim
  cannot run on the CPU device the artifacts are gated on.

``lightdeploy check MODEL --to openvino`` exports the model to ONNX as the export does and checks it.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from lightdeploy.errors import require
from lightdeploy.exporters.checking import CheckReport, Finding, load_checked_onnx
from lightdeploy.exporters.onnx.graph import node_module

DEVICE = "CPU"
STRUCTURAL = ("Parameter", "Result", "Constant")  # not operators a plugin runs


def check_onnx(model_or_path, *, subject: str | None = None) -> CheckReport:
    """Check an ONNX model or file: what OpenVINO cannot convert, then what its CPU plugin cannot run."""
    onnx = require("onnx", package="onnx", extra="onnx", purpose="The OpenVINO operator check")
    ov = require("openvino", package="openvino", extra="openvino", purpose="The OpenVINO operator check")
    from openvino.frontend import FrontEndManager

    version = ov.__version__.split("-")[0]  # "2026.4.1-22982-<commit>-releases/..." -> "2026.4.1"

    with tempfile.TemporaryDirectory(prefix="lightdeploy-ov-check-") as tmp:
        model, path, subject = load_checked_onnx(model_or_path, subject, onnx)
        if path is None:  # OpenVINO's frontend reads a file
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
        frontend = FrontEndManager().load_by_framework("onnx")
        converted = frontend.convert_partially(frontend.load(str(path)))
    # OpenVINO names a converted op after its ONNX node, or after the node's output tensor.
    by_name = {n.name: n for n in model.graph.node if n.name}
    by_name.update({out: n for n in model.graph.node for out in n.output})
    ops = [op for op in converted.get_ordered_ops() if op.get_type_name() not in STRUCTURAL]
    findings = []
    for op in ops:
        if op.get_type_name().endswith("FrameworkNode"):
            node = by_name.get(op.get_friendly_name())
            op_type = f"{node.domain + '.' if node is not None and node.domain else ''}{node.op_type}" if node else "?"
            findings.append(
                Finding(
                    "error",
                    op.get_friendly_name(),
                    op_type,
                    node_module(node) if node is not None else "",
                    f"OpenVINO {version}'s ONNX frontend has no conversion rule for {op_type}",
                )
            )
    if not findings:
        claimed = ov.Core().query_model(converted, DEVICE)
        for op in ops:
            if op.get_friendly_name() not in claimed:
                node = by_name.get(op.get_friendly_name()) or by_name.get(op.get_friendly_name().split("/")[0])
                findings.append(
                    Finding(
                        "error",
                        op.get_friendly_name(),
                        op.get_type_name(),
                        node_module(node) if node is not None else "",
                        f"the OpenVINO {DEVICE} plugin does not run {op.get_type_name()}",
                    )
                )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    counts = Counter(n.op_type for n in model.graph.node)
    return CheckReport(
        "openvino",
        subject,
        opset,
        {"openvino_version": ov.__version__, "method": "ONNX frontend convert_partially, then Core.query_model"},
        dict(sorted(counts.items())),
        findings,
        checker=f"OpenVINO {version} ONNX frontend + {DEVICE} plugin",
    )
