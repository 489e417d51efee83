"""The parity report: JSON for machines, JUnit XML for CI, a table for people."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from lightdeploy.parity.metrics import Check


@dataclass
class ParityReport:
    artifact: str
    model: str
    backend: str
    precision: str
    tolerance: dict
    inputs: list[str]
    outputs: dict[str, dict]  # output name -> tensor stats
    checks: list[Check]
    task_info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # True when a stand-in ran instead of the artifact (lightdeploy.parity.estimate), with its method.
    estimated: bool = False
    method: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def add_float_graph(self, twin: ParityReport) -> None:
        """Append the checks of this artifact's float graph (gated at the fp32 row) as
        "float graph: <subject>" rows: an fp16 / int8 artifact passes only if its graph did too."""
        for c in twin.checks:
            self.checks.append(Check(f"float graph: {c.subject}", c.metric, c.value, c.limit, c.op))
        self.task_info["float_graph"] = {
            "passed": twin.passed,
            "tolerance": twin.tolerance,
            "outputs": twin.outputs,
            "task": twin.task_info,
        }
        self.notes.append(
            f"float graph before {self.precision} (same converter), fp32 row: {'passed' if twin.passed else 'FAILED'}"
        )

    def as_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "passed": self.passed,
            "tolerance": self.tolerance,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "checks": [c.as_dict() for c in self.checks],
            "task": self.task_info,
            "notes": self.notes,
            "estimated": self.estimated,
            "method": self.method,
        }

    def summary(self) -> str:
        kind = "parity ESTIMATED on the CPU:" if self.estimated else "parity"
        if self.passed:
            return f"{kind} PASSED for {self.artifact} ({self.backend}/{self.precision}, {len(self.inputs)} inputs)"
        bad = "; ".join(f"{c.subject} {c.metric} = {c.value:.6g} (limit {c.op} {c.limit:.6g})" for c in self.failures())
        return f"{kind} FAILED for {self.artifact} ({self.backend}/{self.precision}): {bad}"


def write_json(reports: list[ParityReport], path: str | Path) -> None:
    Path(path).write_text(json.dumps([r.as_dict() for r in reports], indent=2))


def write_junit(reports: list[ParityReport], path: str | Path) -> None:
    """One <testsuite> per artifact, one <testcase> per check."""
    suites = ET.Element("testsuites")
    for r in reports:
        suite = ET.SubElement(
            suites, "testsuite", name=f"parity.{r.artifact}", tests=str(len(r.checks)), failures=str(len(r.failures()))
        )
        for c in r.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"parity.{r.model}.{r.backend}.{r.precision}",
                name=f"{c.subject}.{c.metric}",
            )
            if not c.passed:
                ET.SubElement(case, "failure", message=f"{c.metric} = {c.value:.6g}, limit {c.op} {c.limit:.6g}")
    ET.ElementTree(suites).write(str(path), encoding="utf-8", xml_declaration=True)


def render_table(report: ParityReport):
    """A rich Table: one row per output (max abs, max rel, cosine), then the task metric rows."""
    from rich.table import Table

    table = Table(title=f"parity: {report.artifact} ({report.backend}/{report.precision})")
    for col in ("subject", "metric", "value", "limit", "ok"):
        table.add_column(col, overflow="fold")
    for name, s in report.outputs.items():
        table.add_row(name, "max abs / max rel", f"{s['max_abs']:.3g} / {s['max_rel']:.3g}", "", "")
        if "reported_inputs" in s:  # noise at a calibrated precision (parity/inputs.py)
            table.add_row(name, "cosine on noise (not gated)", f"{s['reported_inputs']['cosine']:.6g}", "", "reported")
    for c in report.checks:
        table.add_row(
            c.subject,
            c.metric,
            f"{c.value:.6g}",
            f"{c.op} {c.limit:.6g}",
            "[green]yes[/]" if c.passed else "[red]NO[/]",
        )
    return table
