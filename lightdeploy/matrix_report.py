"""The matrix's outputs: the terminal table, JSON (read back by ``--resume``), Markdown with the runs
behind it; the PNG is matrix_plot.py.  Running the cells is matrix.py."""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict, fields
from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.matrix import MatrixCell


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def write_json(cells: list[MatrixCell], path: Path, meta: dict) -> None:
    """Written beside and renamed into place: a run interrupted mid-write keeps the previous checkpoint."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"meta": meta, "cells": [asdict(c) for c in cells]}, indent=2))
    os.replace(partial, path)


def read_run(path: Path) -> tuple[list[MatrixCell], dict]:
    """An earlier run's cells (``--resume``; unknown keys from another version are dropped) and its meta
    (date, command, machine, versions)."""
    names = {f.name for f in fields(MatrixCell)}
    data = json.loads(path.read_text())
    cells = [MatrixCell(**{k: v for k, v in c.items() if k in names}) for c in data["cells"]]
    return cells, data.get("meta", {})


def run_commands(meta: dict) -> list[str]:
    """The commands of the runs behind a table, in order (older files joined them in one string,
    "`A`, then `B`")."""
    if "commands" in meta:
        return list(meta["commands"])
    return meta["command"].split("`, then `") if meta.get("command") else []


def run_meta(threads: int, runs: int, command: str) -> dict:
    from lightdeploy.artifact import cpu_summary
    from lightdeploy.versions import installed_versions

    cpu = cpu_summary()
    return {
        "date": datetime.date.today().isoformat(),
        "commands": [command],
        "threads": threads,
        "runs": runs,
        "machine": f"{platform.machine()}, {cpu}, {platform.system()}",
        "cpu": cpu,
        "versions": installed_versions(),
    }


def resumed_meta(earlier: dict, meta: dict) -> dict:
    """The meta of a run that adds cells to ``earlier``'s table.  A table's latencies and int8 speed-ups
    hold for one CPU (its kernels follow the CPU's extensions), so cells timed on another are refused;
    a table from before the CPU was recorded says so in its machine line."""
    before = earlier.get("cpu")
    if before is not None and before != meta["cpu"]:
        raise UsageError(
            f"The cells in the --json file were timed on {before}; this machine is {meta['cpu']}. Their "
            "latencies do not mix in one table: resume on that machine, or run the matrix into a new --json file."
        )
    if before is None and "machine" in earlier:
        meta = {**meta, "machine": f"{meta['machine']} (the earlier runs' CPU is not recorded: {earlier['machine']})"}
    return meta


COLUMNS = (
    "model",
    "target",
    "gate",
    "key figure",
    "export s",
    "MB",
    "ms med",
    "ms p90",
    "b8 img/s",
    "x eager",
    "x ORT",
    "load",
)


def cell_values(c: MatrixCell) -> list[str]:
    return [
        c.model,
        f"{c.target}/{c.precision}",
        c.status,
        c.key,
        _fmt(c.export_s, ".0f"),
        _fmt(c.size_mb, ".1f"),
        _fmt(c.median_ms, ".2f"),
        _fmt(c.p90_ms, ".2f"),
        _fmt(c.batch8_ips, ".0f"),
        _fmt(c.x_eager, ".2f"),
        _fmt(c.x_ort, ".2f"),
        _fmt(c.load, ".1f"),
    ]


def render_table(cells: list[MatrixCell], width: int = 80):
    """The terminal table.  Under 120 columns a cell takes three lines in the first column (model, target,
    key figure) and the export time and p90 are left to the JSON and Markdown, so 80 columns stay readable."""
    from rich.table import Table
    from rich.text import Text

    wide = width >= 120
    table = Table(title=f"lightdeploy matrix, batch 1 latency at {cells[0].threads if cells else '?'} threads")
    heads = list(COLUMNS) if wide else ["model", "gate", "MB", "ms med", "b8 img/s", "x eager", "x ORT"]
    for h in heads:
        table.add_column(h, justify="left" if h in ("model", "target", "gate", "key figure") else "right")
    for c in cells:
        values = dict(zip(COLUMNS, cell_values(c)))
        values["gate"] = Text(c.status, style="green" if c.status == "pass" else "red")
        if not wide:
            values["model"] = Text.assemble(c.model, "\n", f"{c.target}/{c.precision}", "\n", (c.key, "dim"))
        table.add_row(*(values[h] for h in heads))
    return table


def write_markdown(cells: list[MatrixCell], path: Path, meta: dict) -> None:
    lines = [
        "# lightdeploy matrix",
        "",
        f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} threads, "
        f"{meta['runs']} timed runs per cell after warm-up, by the runs listed under the table.",
        "MB: the file the runtime loads, with its sidecars. Latency is batch 1; b8 img/s is throughput at batch 8 where the artifact takes a dynamic batch "
        "(TFLite artifacts have a fixed batch). x eager / x ORT: latency over eager PyTorch's and over "
        "ONNX Runtime fp32's for the same model (eager timed in the cell's run; a cell added by --resume is "
        "compared with an ONNX Runtime cell timed in an earlier run: compare their load). gate: the parity gate's verdict "
        "against the tolerance table (docs/design.md#tolerance-table); a FAIL artifact is still timed. "
        "load: the 1-minute load average when the cell was timed; above the core count the machine was shared and "
        "the latencies of that row are inflated.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for c in cells:
        lines.append("| " + " | ".join(v.replace("|", "/") for v in cell_values(c)) + " |")
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines += ["", "The runs, in order:", ""]
    lines += [f"{i}. `{command}`" for i, command in enumerate(run_commands(meta), 1)]
    lines += ["", f"Versions: {versions}.", ""]
    path.write_text("\n".join(lines))
