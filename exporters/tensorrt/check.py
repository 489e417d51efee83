"""The TensorRT operator check: every ONNX node against TensorRT 10's ONNX operator support (``support.py``).

``check_onnx(model_or_path)`` checks a graph; ``check_prepared(model)`` first applies the exact rewrites
the export applies (``prepare.py``), as the export does before building.  Problems name the nn.Module
that produced the node (``exporters/onnx/graph.py``).  ``lightdeploy check MODEL --to trt`` exports the
model and runs ``check_prepared`` (``lightdeploy/checks.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.onnx.graph import graph_constants, node_module, static_shapes
from lightdeploy.exporters.tensorrt import support


@dataclass
class Finding:
    severity: str  # "error" | "warning"
    node: str
    op_type: str
    module: str  # nn.Module path (and class) that produced the node, "" when unknown
    message: str
    rewrite: str = ""


@dataclass
class CheckReport:
    target: str
    subject: str
    opset: int
    source: dict
    op_counts: dict[str, int]
    findings: list[Finding] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)  # exact rewrites applied first (prepare.py)

    @property
    def supported(self) -> bool:
        return not self.errors()

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["supported"] = self.supported
        return d

    def summary(self) -> str:
        verdict = "supported" if self.supported else f"NOT supported ({len(self.errors())} unsupported node(s))"
        rewritten = f", {len(self.rewrites)} node(s) rewritten for TensorRT" if self.rewrites else ""
        return (
            f"{self.subject}: TensorRT {self.source['tensorrt_version']} ONNX parser: {verdict}; "
            f"{sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types, opset {self.opset}, "
            f"{len(self.warnings())} warning(s){rewritten}"
        )

    def text(self) -> str:
        """Plain text (for error messages and logs)."""
        lines = [self.summary()] + [f"  [rewritten] {r}" for r in self.rewrites]
        for f in self.errors() + self.warnings():
            where = f" in {f.module}" if f.module else ""
            lines.append(f"  [{f.severity}] {f.node} ({f.op_type}){where}: {f.message}")
            if f.rewrite:
                lines.append(f"      suggested rewrite: {f.rewrite}")
        return "\n".join(lines)

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        ops = Table(title=f"TensorRT {self.source['tensorrt_version']} operator check: {self.subject}")
        for col in ("op type", "nodes", "status"):
            ops.add_column(col)
        bad = Counter(f.op_type for f in self.errors())
        warn = Counter(f.op_type for f in self.warnings())
        for op, n in sorted(self.op_counts.items()):
            status = (
                "[red]unsupported[/]"
                if bad[op]
                else "[yellow]supported, see notes[/]"
                if warn[op]
                else "[green]supported[/]"
            )
            ops.add_row(op, str(n), status)
        parts = [ops]
        if self.findings:
            detail = Table(title="findings")
            for col in ("severity", "node", "module", "message", "suggested rewrite"):
                detail.add_column(col, overflow="fold")
            for f in self.errors() + self.warnings():
                sev = "[red]error[/]" if f.severity == "error" else "[yellow]warning[/]"
                detail.add_row(sev, f"{f.node} ({f.op_type})", f.module, f.message, f.rewrite)
            parts.append(detail)
        parts.append(("[green]" if self.supported else "[red]") + self.summary() + "[/]")
        return Group(*parts)


# ----------------------------------------------------------------------------------------- checks
def check_onnx(model_or_path, *, subject: str | None = None, rewrites: list[str] | None = None) -> CheckReport:
    """Check every node (subgraphs included) of an ONNX model or file against TensorRT 10.

    ``rewrites``: what ``prepare.prepare`` changed before, reported with the findings."""
    onnx = require("onnx", package="onnx", extra="onnx", purpose="The TensorRT operator check")

    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise UsageError(f"ONNX file {str(path)!r} does not exist.")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse error is a bad file
            raise UsageError(f"{str(path)!r} is not a readable ONNX model ({exc}).") from None
        subject = subject or path.name
    else:
        model = model_or_path
        subject = subject or (model.graph.name or "model")
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
        "trt", subject, opset, dict(support.SOURCE), dict(sorted(counts.items())), findings, list(rewrites or [])
    )


def check_prepared(model, *, subject: str) -> CheckReport:
    """What the TensorRT export does before building: apply the exact rewrites of ``prepare.prepare``
    to ``model`` in place, then check it; the report lists the rewrites."""
    from lightdeploy.exporters.tensorrt.prepare import prepare

    rewrites = prepare(model)
    return check_onnx(model, subject=subject, rewrites=rewrites)
