"""What an operator check reports, for every target (``lightdeploy check MODEL --to TARGET``).

Each backend package checks with its own knowledge (``tensorrt/check.py``: TensorRT's ONNX operator
table; ``openvino/check.py``: OpenVINO's ONNX frontend and CPU plugin; ``tflite/check.py``:
litert-torch's lowering table) and returns a ``CheckReport``: one ``Finding`` per problem, naming the
nn.Module that produced the node when the graph says.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lightdeploy.errors import UsageError


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
    source: dict  # what the check knows and where that comes from (operator table, versions)
    op_counts: dict[str, int]
    findings: list[Finding] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)  # exact rewrites applied first (TensorRT's prepare.py)
    checker: str = ""  # e.g. "TensorRT 10.15 ONNX parser"

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
        rewritten = f", {len(self.rewrites)} node(s) rewritten before the check" if self.rewrites else ""
        opset = f", opset {self.opset}" if self.opset else ""
        return (
            f"{self.subject}: {self.checker}: {verdict}; {sum(self.op_counts.values())} nodes, "
            f"{len(self.op_counts)} op types{opset}, {len(self.warnings())} warning(s){rewritten}"
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

        ops = Table(title=f"{self.checker} operator check: {self.subject}")
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


def load_checked_onnx(model_or_path, subject: str | None, onnx):
    """``(model, path or None, subject)`` for a check's argument: an onnx.ModelProto or a file path.

    A missing or unreadable file is the user's input, so it is a ``UsageError`` naming the file."""
    if not isinstance(model_or_path, (str, Path)):
        return model_or_path, None, subject or (model_or_path.graph.name or "model")
    path = Path(model_or_path)
    if not path.is_file():
        raise UsageError(f"ONNX file {str(path)!r} does not exist.")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse error is a bad file
        raise UsageError(f"{str(path)!r} is not a readable ONNX model ({exc}).") from None
    return model, path, subject or path.name
