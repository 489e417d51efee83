"""``lightdeploy check ... --to trt``: every ONNX node against TensorRT 10's ONNX operator support.

``check_onnx(model_or_path)`` checks a graph; ``check_model(name)`` exports a registered model to a
temporary ONNX file with the pipeline's own ``export_onnx`` and checks that.  Problems name the
nn.Module that produced the node: the dynamo exporter writes the module path into each node's
``metadata_props`` (``pkg.torch.onnx.name_scopes``, e.g. ``['', 'stage2', 'stage2.0', ...]``, and
``pkg.torch.onnx.class_hierarchy``), which the ONNX exporter keeps through simplification.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lightdeploy.errors import UsageError, require

from lightdeploy.exporters.onnx import CLASS_HIERARCHY, NAME_SCOPES, graph_constants

NAMESPACE = "namespace"


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
    rewrites: list[str] = field(default_factory=list)  # exact rewrites applied first (exporters/trt_prepare.py)

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
        return (f"{self.subject}: TensorRT {self.source['tensorrt_version']} ONNX parser: {verdict}; "
                f"{sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types, opset {self.opset}, "
                f"{len(self.warnings())} warning(s){rewritten}")

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
            status = "[red]unsupported[/]" if bad[op] else "[yellow]supported, see notes[/]" if warn[op] else "[green]supported[/]"
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


# ----------------------------------------------------------------------------------- module paths
def node_scopes(node) -> list[str]:
    """The module-path scopes of a node from its metadata (empty when the exporter wrote none)."""
    props = {p.key: p.value for p in node.metadata_props}
    if NAME_SCOPES in props:
        try:
            return [s for s in ast.literal_eval(props[NAME_SCOPES]) if s]
        except (ValueError, SyntaxError):
            return []
    if NAMESPACE in props:  # ": pkg.Cls/conv1: torch.nn.Sequential/conv1.1: torch.nn.BatchNorm2d/op: aten..."
        return [part.split(":")[0].strip() for part in props[NAMESPACE].split("/") if part.split(":")[0].strip()]
    return []


def node_module(node) -> str:
    """'stage2.0.branch1.1 (BatchNorm2d)': the innermost nn.Module that produced ``node``, or ''."""
    scopes = node_scopes(node)
    if len(scopes) < 2:  # the last scope is the fx node itself
        return ""
    path = scopes[-2]
    props = {p.key: p.value for p in node.metadata_props}
    cls = ""
    if CLASS_HIERARCHY in props:
        try:
            hierarchy = ast.literal_eval(props[CLASS_HIERARCHY])
            cls = hierarchy[-2].rsplit(".", 1)[-1] if len(hierarchy) >= 2 else ""
        except (ValueError, SyntaxError):
            cls = ""
    return f"{path} ({cls})" if cls else path


def node_module_path(node) -> str:
    """The innermost module path alone ('' for the root module or when unknown)."""
    scopes = node_scopes(node)
    return scopes[-2] if len(scopes) >= 2 else ""


# ----------------------------------------------------------------------------------------- checks
def check_onnx(model_or_path, *, subject: str | None = None, rewrites: list[str] | None = None) -> CheckReport:
    """Check every node (subgraphs included) of an ONNX model or file against TensorRT 10.

    ``rewrites``: what ``trt_prepare.prepare`` changed before, reported with the findings."""
    onnx = require("onnx", package="onnx", extra="onnx", purpose="The TensorRT operator check")
    from lightdeploy.exporters import trt_support
    from lightdeploy.exporters.trt_prepare import static_shapes

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
    findings = [Finding(sev, "(model)", "opset", "", msg) for sev, msg in trt_support.opset_problems(opset)]
    counts: Counter = Counter()
    try:
        shapes = static_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort; the rules then see no shapes
        shapes = {}

    def walk(graph, consts):
        consts = {**consts, **graph_constants(graph)}
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        facts = trt_support.GraphFacts(consts, used, shapes)
        for node in graph.node:
            counts[node.op_type] += 1
            for sev, msg in trt_support.check_node(node, facts, opset):
                rewrite = trt_support.REWRITES.get(node.op_type, "") if sev == "error" else ""
                findings.append(Finding(sev, node.name or "(unnamed)", node.op_type, node_module(node), msg, rewrite))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g, consts)
                for g in a.graphs:
                    walk(g, consts)

    walk(model.graph, {})
    return CheckReport("trt", subject, opset, dict(trt_support.SOURCE), dict(sorted(counts.items())), findings,
                       list(rewrites or []))


def check_model(name: str, *, input_size: tuple[int, int] | None = None, opset: int = 18,
                dynamic_batch: bool = False, extra: dict | None = None) -> CheckReport:
    """Export a registered model to a temporary ONNX file (the pipeline's ``export_onnx``), apply the
    TensorRT export's exact rewrites (``trt_prepare.prepare``) and check the result, as export does.

    Weights do not change the graph's operators, so the model is built with random weights and no
    BN re-estimation.
    """
    import tempfile

    from lightdeploy.exporters.base import ExportJob, ExportOptions
    from lightdeploy.exporters.onnx import export_onnx
    from lightdeploy.factory import create_model
    from lightdeploy.models.registry import get_spec
    from lightdeploy.pipeline import _output_names

    spec = get_spec(name)
    size = spec.check_input_size(input_size or spec.input_size)
    model = create_model(name, input_size=size, calibrate_bn=False)
    options = ExportOptions(target="trt", input_size=size, dynamic_batch=dynamic_batch, opset=opset,
                            extra=dict(extra or {}))
    deployable = spec.export_wrapper(model, options.extra) if spec.export_wrapper else model
    outputs = _output_names(spec, options)
    job = ExportJob(model=deployable, spec=spec, options=options, output_names=outputs)
    with tempfile.TemporaryDirectory(prefix="lightdeploy-check-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(job, path)
        import onnx

        return check_prepared(onnx.load(str(path)), subject=name)


def check_prepared(model, *, subject: str) -> CheckReport:
    """What the TensorRT export does before building: apply the exact rewrites of
    ``trt_prepare.prepare`` to ``model`` in place, then check it; the report lists the rewrites."""
    from lightdeploy.exporters.trt_prepare import prepare

    rewrites = prepare(model)
    return check_onnx(model, subject=subject, rewrites=rewrites)


def check(target: str, *, input_size: tuple[int, int] | None = None, opset: int = 18) -> CheckReport:
    """The CLI entry: an existing ``.onnx`` file, or a registered model name."""
    path = Path(target)
    if path.suffix == ".onnx" or path.is_file():
        return check_onnx(path)
    return check_model(target, input_size=input_size, opset=opset)
