"""The product at a glance: models x CPU backends x precisions, exported, gated and timed in one run.

    lightdeploy bench --matrix mobilenetv2 thundernet_snet49:synthetic --out matrix/
    make matrix                      # every registered model (aliases once), docs/matrix.{md,json,png}

Each cell is one artifact: export seconds, the gate's verdict and its key figure, artifact size,
batch-1 latency (median, p90) at the stated thread count, throughput at batch 8 where the artifact
takes a batch of 8, and the ratios to eager PyTorch and to ONNX Runtime fp32 of the same model, both
timed in the same run (a shared machine is noisy across runs).  A failed export or gate is a cell with
its reason, never a crash: the matrix is a survey.  ``--resume`` keeps the cells of an earlier JSON and
runs the missing ones, so the table grows cell by cell across runs.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (target, precision) per CPU backend; the ONNX artifact is ORT's fp32 reference for the "x ORT" ratio.
TARGETS: tuple[tuple[str, str], ...] = (
    ("onnx", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "fp16"),
    ("openvino", "int8"),
    ("tflite", "fp32"),
    ("tflite", "fp16"),
    ("tflite", "int8"),
)
THROUGHPUT_BATCH = 8
DYNAMIC_BATCH_TARGETS = {"onnx", "openvino"}  # TFLite artifacts have a fixed batch


@dataclass
class MatrixCell:
    model: str
    target: str
    precision: str
    status: str  # "pass", "FAIL" (gate failed, artifact kept and timed) or "error" (no artifact)
    key: str = ""  # the gate's key figure, or the error
    parity_error: float | None = None  # 1 - worst output cosine over the gate's inputs
    export_s: float | None = None
    size_mb: float | None = None
    threads: int | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    batch8_ips: float | None = None  # images/s at batch 8; None for a fixed-batch artifact
    x_eager: float | None = None
    x_ort: float | None = None
    load: float | None = None  # the 1-minute load average when timed: above the core count, the machine was shared
    folder: str = ""

    @property
    def cell_id(self) -> tuple[str, str, str]:
        return (self.model, self.target, self.precision)


def parse_cells(texts: list[str]) -> tuple[tuple[str, str], ...]:
    """``["ov/int8", "onnx/fp32"]`` -> canonical (target, precision) pairs, each a CPU cell of the matrix."""
    from lightdeploy.errors import UsageError
    from lightdeploy.exporters import resolve_target

    pairs = []
    for text in texts:
        target, _, precision = text.partition("/")
        pair = (resolve_target(target), precision)
        if pair not in TARGETS:
            known = ", ".join(f"{t}/{p}" for t, p in TARGETS)
            raise UsageError(f"--to {text!r} is not a CPU cell of the matrix. Cells: {known}.")
        pairs.append(pair)
    return tuple(dict.fromkeys(pairs))


def default_models() -> list[str]:
    """Every registered model and named weights (MODEL:TAG: trained, so their int8 cells mean most); an
    alias such as ``thundernet`` only through the name it stands for."""
    from lightdeploy.models.registry import get_spec, list_models

    return [name for name in list_models() if ":" in name or not get_spec(name).alias_of]


def key_figure(report: dict) -> str:
    """The first failed check, else 1 - the worst output cosine and the task metric the gate judged."""
    failed = [c for c in report["checks"] if not c["passed"]]
    if failed:
        c = failed[0]
        return f"{c['subject']} {c['metric']} {c['value']:.4g} (limit {c['op']} {c['limit']:.4g})"
    task = next(((k, v) for k, v in report["task"].items() if isinstance(v, float)), None)
    return f"1-cos {parity_error(report):.1e}" + (f", {task[0]} {task[1]:.3f}" if task else "")


def parity_error(report: dict) -> float:
    return max(0.0, 1.0 - min((s["cosine"] for s in report["outputs"].values()), default=1.0))


def deployed_size_mb(folder: Path, manifest: dict) -> float:
    """The file the runtime loads and its own sidecars (OpenVINO's .bin, ONNX external data); not the
    model.onnx an OpenVINO or TFLite artifact keeps beside it for localisation, nor logs and reports."""
    main = manifest["backend_file"]
    ours = [n for n in manifest["files"] if n.startswith(main)]
    if main.endswith(".xml"):
        ours.append(main.removesuffix(".xml") + ".bin")
    return sum((folder / name).stat().st_size for name in ours if (folder / name).is_file()) / 1e6


def run_matrix(
    models: list[str],
    out: Path,
    *,
    targets: tuple[tuple[str, str], ...] = TARGETS,
    threads: int = 2,
    runs: int = 30,
    warmup: int = 5,
    done: list[MatrixCell] | None = None,
    input_size: tuple[int, int] | None = None,
    progress: Callable[[str], None] = lambda msg: None,
    checkpoint: Callable[[list[MatrixCell]], None] = lambda cells: None,
    retime: bool = False,
) -> list[MatrixCell]:
    """Export, gate and time every (model, target, precision) not already in ``done``.

    Cells in ``done`` are kept as they are (a resumed run, or one that adds cells with ``targets``), also
    those of models not asked for.  ``input_size``: one size for all (default: each model's own).
    ``checkpoint`` gets every cell so far after each cell and after each model's ratios (a long run
    interrupted keeps what it did; a resumed run fills the ratios its cells lack).  ``retime``: the kept
    cells of ``models`` timed while the machine was shared (``shared``) are timed again from their
    folders, with their model's eager latency; the export, gate and size stay as recorded.
    Cells run in the order of ``models``; the table is in registry order (a model outside
    ``default_models``, such as an alias, after them as asked), each model's cells as in ``TARGETS``, so
    runs that add cells in any order leave the same table."""
    import torch

    from lightdeploy.models.registry import get_spec

    for model in models:
        get_spec(model)  # an unknown name fails here, with the closest names, before any work
    cells = {c.cell_id: c for c in (done or [])}
    order = [*default_models(), *models]
    todo = [(m, t, p) for m in models for t, p in targets if (m, t, p) not in cells]
    torch.set_num_threads(threads)
    unrated = [c.model for c in _unrated(cells.values()) if c.model in models]
    again = [c for c in cells.values() if c.model in models and shared(c)] if retime else []
    for model in dict.fromkeys([*(m for m, _, _ in todo), *(c.model for c in again), *unrated]):
        for step, (m, target, precision) in enumerate(todo, 1):
            if m == model:
                progress(f"[{step}/{len(todo)}] {model} -> {target}/{precision}")
                cell = _cell(model, target, precision, out, input_size, threads, runs, warmup)
                cells[cell.cell_id] = cell
                checkpoint(_table_order(cells.values(), order))
        for cell in (c for c in again if c.model == model):
            progress(f"re-timing {model} -> {cell.target}/{cell.precision} (timed at load {cell.load:.1f})")
            _retime(cell, threads, runs, warmup, progress)
            checkpoint(_table_order(cells.values(), order))
        mine = [c for c in cells.values() if c.model == model]
        if _fill_ratios(mine, input_size, threads, runs, warmup, progress):
            checkpoint(_table_order(cells.values(), order))
    return _table_order(cells.values(), order)


def shared(cell: MatrixCell) -> bool:
    """Timed while the 1-minute load average was above this machine's core count: other work shared the
    cores, so its latency is inflated (the run's own timing loop keeps the load near ``threads``)."""
    return cell.median_ms is not None and cell.load is not None and cell.load > (os.cpu_count() or 1)


def _retime(cell: MatrixCell, threads: int, runs: int, warmup: int, progress) -> None:
    """Time a kept cell's artifact again; its ratio to eager is left for ``_fill_ratios``.  A folder that
    is gone (a fresh checkout has the table, not the artifacts) or no longer runs keeps the old timing."""
    from lightdeploy.runtimes.manifest import read_manifest

    folder = Path(cell.folder or "")
    if not (folder / "manifest.json").is_file():
        progress(f"{cell.model} -> {cell.target}/{cell.precision} keeps its timing: {folder} is not here")
        return
    try:
        _time_artifact(cell, folder, read_manifest(folder), threads, runs, warmup)
    except Exception as exc:  # noqa: BLE001 - the old timing stands; the reason is shown
        progress(f"{cell.model} -> {cell.target}/{cell.precision} keeps its timing: {type(exc).__name__}: {exc}")
        return
    cell.threads, cell.x_eager = threads, None


def _unrated(cells) -> list[MatrixCell]:
    """Timed cells without their ratio to eager (a run interrupted between a cell and its model's eager
    timing, or a cell of this run)."""
    return [c for c in cells if c.median_ms is not None and c.x_eager is None]


def _table_order(cells, models: list[str]) -> list[MatrixCell]:
    cells = list(cells)
    rank = {m: i for i, m in enumerate(dict.fromkeys([*models, *(c.model for c in cells)]))}
    slot = {pair: i for i, pair in enumerate(TARGETS)}
    return sorted(cells, key=lambda c: (rank[c.model], slot.get((c.target, c.precision), len(slot))))


def _cell(model, target, precision, out: Path, input_size, threads: int, runs: int, warmup: int) -> MatrixCell:
    from lightdeploy.errors import ParityError
    from lightdeploy.models.registry import get_spec
    from lightdeploy.pipeline import export
    from lightdeploy.runtimes.manifest import read_manifest

    # detectors run one image per call (their NMS is per image); TFLite artifacts have a fixed batch
    dynamic = target in DYNAMIC_BATCH_TARGETS and get_spec(model).task != "detect"
    t0 = time.perf_counter()
    try:
        outcome = export(model, target, precision=precision, input_size=input_size, dynamic_batch=dynamic, out=out)
        folder, status = outcome.folder, "pass"
    except ParityError as exc:  # the artifact is kept (as NAME.failed) and timed: speed and parity are separate facts
        folder, status = Path(exc.folder), "FAIL"
    except Exception as exc:  # noqa: BLE001 - a survey records every failure as a row
        return MatrixCell(model, target, precision, "error", f"{type(exc).__name__}: {str(exc)[:200]}")
    export_s = time.perf_counter() - t0
    manifest = read_manifest(folder)
    report = manifest["parity"]
    cell = MatrixCell(
        model,
        target,
        precision,
        status,
        key_figure(report),
        parity_error(report),
        export_s,
        deployed_size_mb(folder, manifest),
        threads,
        folder=str(folder),
    )
    try:
        _time_artifact(cell, folder, manifest, threads, runs, warmup)
    except Exception as exc:  # noqa: BLE001 - an artifact that does not run is a finding, not a crash
        cell.status, cell.key = "error", f"timing: {type(exc).__name__}: {str(exc)[:200]}"
    return cell


def _time_artifact(cell: MatrixCell, folder: Path, manifest: dict, threads: int, runs: int, warmup: int) -> None:
    from lightdeploy.bench import random_feed, time_fn
    from lightdeploy.runtimes import open_runtime

    rng = np.random.default_rng(0)
    with open_runtime(folder, manifest, threads=threads, allow_unverified=True) as runtime:
        cell.median_ms, cell.p90_ms = time_fn(
            functools.partial(runtime.run, random_feed(manifest, rng=rng)), warmup, runs
        )
        cell.load = os.getloadavg()[0]
        if not isinstance(manifest["inputs"][0]["shape"][0], int):  # a dynamic batch dim
            big = random_feed(manifest, THROUGHPUT_BATCH, rng)
            median, _ = time_fn(functools.partial(runtime.run, big), max(1, warmup // 2), max(3, runs // 4))
            cell.batch8_ips = THROUGHPUT_BATCH * 1e3 / median


def _fill_ratios(mine: list[MatrixCell], input_size, threads, runs, warmup, progress) -> bool:
    """Ratios to the model's eager latency (timed now) and to its ONNX Runtime fp32 cell, for the timed
    cells of ``mine`` (one model's cells, fresh or kept) that lack them; kept cells keep their own.
    Whether any cell was filled."""
    import torch

    from lightdeploy.bench import time_fn
    from lightdeploy.factory import create_model
    from lightdeploy.models.registry import get_spec

    timed = _unrated(mine)
    if not timed:
        return False
    model = timed[0].model
    progress(f"timing eager {model}")
    size = input_size or get_spec(model).input_size
    net = create_model(model, input_size=size, calibrate_bn=False)
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        eager_ms, _ = time_fn(lambda: net(x), warmup, runs)
    ort = next((c.median_ms for c in mine if (c.target, c.precision) == ("onnx", "fp32") and c.median_ms), None)
    for c in timed:
        c.x_eager = c.median_ms / eager_ms
    for c in mine:  # every cell's, as the ONNX Runtime cell may have been timed again
        if c.median_ms is not None:
            c.x_ort = c.median_ms / ort if ort else None
    return True
