"""Latency benchmark: eager PyTorch and each artifact, batch as exported, in one run.

Median and p90 after warm-up, with the thread count stated; each artifact's ratio is to the eager
latency of its own model measured in the same run (a shared machine is noisy across runs).
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchRow:
    subject: str  # model name or artifact folder name
    model: str
    runtime: str  # "eager" or backend/precision
    input_shape: list[int]
    threads: int
    runs: int
    median_ms: float
    p90_ms: float
    ratio_to_eager: float | None = None
    cpu: str = ""  # artifact.cpu_summary(): the CPU the latency holds for


def sample_fn(fn, warmup: int, runs: int) -> list[float]:
    """Each timed call's latency (ms) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    """(median, p90) ms."""
    return float(np.median(times)), float(np.percentile(times, 90))


def time_fn(fn, warmup: int, runs: int) -> tuple[float, float]:
    return summary(sample_fn(fn, warmup, runs))


def concrete_shape(manifest: dict) -> list[int]:
    """The artifact's input shape with dynamic dims set: batch 1, H and W the exported size."""
    dims = manifest["inputs"][0]["shape"]
    h, w = manifest["preprocessing"]["size"]
    spatial = (2, 3) if manifest["preprocessing"].get("layout", "NCHW") == "NCHW" else (1, 2)
    fill = {0: 1, spatial[0]: h, spatial[1]: w}
    return [d if isinstance(d, int) else fill.get(i, 1) for i, d in enumerate(dims)]


def random_feed(manifest: dict, batch: int | None = None, rng: np.random.Generator | None = None) -> dict:
    """``{input name: standard-normal float32 of concrete_shape}``, the batch set to ``batch`` when given:
    what every timing of an artifact feeds it (speed does not depend on the values)."""
    shape = concrete_shape(manifest)
    if batch is not None:
        shape[0] = batch
    rng = rng if rng is not None else np.random.default_rng(0)
    return {manifest["inputs"][0]["name"]: rng.standard_normal(shape).astype(np.float32)}


def time_artifact(
    folder: Path, manifest: dict, *, runs: int, warmup: int, threads: int, allow_unverified: bool = False
) -> list[float]:
    """Each timed ``run`` (ms) of one artifact on a random feed of ``concrete_shape``: what ``lightdeploy
    bench`` summarises for it, and what bench/independent.py compares with the backends' own tools."""
    with _opened_artifact(folder, manifest, threads, allow_unverified) as call:
        return sample_fn(call, warmup, runs)


@contextlib.contextmanager
def _opened_artifact(folder: Path, manifest: dict, threads: int, allow_unverified: bool):
    """One call of the artifact on a random feed of ``concrete_shape``, while its runtime is open."""
    from lightdeploy.runtimes import open_runtime

    with open_runtime(folder, manifest, threads=threads, allow_unverified=allow_unverified) as runtime:
        yield functools.partial(runtime.run, random_feed(manifest))


@contextlib.contextmanager
def _opened_eager(build: Callable, shape: list[int]):
    import torch

    model, x = build(), torch.randn(*shape)

    def call():
        with torch.inference_mode():
            model(x)

    yield call


@dataclass
class _Timed:
    row: BenchRow  # median, p90 and ratio filled once timed
    opened: Callable  # -> a context manager yielding one call
    eager_key: tuple


def _sample_all(timed: list[_Timed], runs: int, warmup: int, rounds: int, progress) -> None:
    """Time every subject: one after the other (``rounds`` 1, one runtime open at a time), or in
    ``rounds`` interleaved rounds with all of them open, so that a host whose speed drifts from minute
    to minute slows every subject alike and their ratios hold (docs/measurements.md#speed-targets)."""
    if rounds == 1:
        for t in timed:
            progress(f"timing {t.row.subject}")
            with t.opened() as call:
                t.row.median_ms, t.row.p90_ms = summary(sample_fn(call, warmup, runs))
        return
    shares = [runs // rounds + (i < runs % rounds) for i in range(rounds)]
    with contextlib.ExitStack() as stack:
        calls = [stack.enter_context(t.opened()) for t in timed]
        for call in calls:
            sample_fn(call, warmup, 0)
        samples: list[list[float]] = [[] for _ in timed]
        for r, share in enumerate(shares, 1):
            progress(f"round {r}/{rounds}")
            for times, call in zip(samples, calls):
                times.extend(sample_fn(call, 0, share))
    for t, times in zip(timed, samples):
        t.row.median_ms, t.row.p90_ms = summary(times)


def bench(
    subjects: list[str],
    *,
    runs: int = 50,
    warmup: int = 10,
    threads: int = 2,
    rounds: int = 1,
    progress=lambda msg: None,
    allow_unverified: bool = False,
) -> list[BenchRow]:
    """``subjects``: model names and/or artifact folders.  Eager is timed once per model.
    ``rounds``: split the ``runs`` into that many interleaved rounds over every subject.
    ``allow_unverified``: time artifacts whose parity gate failed or never ran too."""
    import torch

    from lightdeploy.artifact import cpu_summary
    from lightdeploy.errors import UsageError
    from lightdeploy.factory import create_model, eager_from_manifest
    from lightdeploy.models.registry import get_spec
    from lightdeploy.runtimes.manifest import read_manifest

    if not 1 <= rounds <= runs:
        raise UsageError(f"rounds must be between 1 and the runs ({runs}); got {rounds}.")
    torch.set_num_threads(threads)
    timed: list[_Timed] = []
    eager: dict[tuple, _Timed] = {}

    def add_eager(name: str, size: tuple[int, int], batch: int, build) -> tuple:
        key = (name, size, batch)
        if key not in eager:
            shape = [batch, 3, *size]
            row = BenchRow(name, name, "eager", shape, threads, runs, 0.0, 0.0, 1.0)
            eager[key] = _Timed(row, functools.partial(_opened_eager, build, shape), key)
            timed.append(eager[key])
        return key

    for subject in subjects:
        path = Path(subject)
        if path.is_dir():
            manifest = read_manifest(path)
            size = tuple(manifest["preprocessing"]["size"])
            shape = concrete_shape(manifest)
            # eager as exported (your own models from their recorded factory); timing needs no BN values
            key = add_eager(
                manifest["model"], size, shape[0], functools.partial(eager_from_manifest, manifest, calibrate_bn=False)
            )
            runtime = f"{manifest['backend']}/{manifest['precision']}"
            row = BenchRow(path.name, manifest["model"], runtime, shape, threads, runs, 0.0, 0.0)
            opened = functools.partial(_opened_artifact, path, manifest, threads, allow_unverified)
            timed.append(_Timed(row, opened, key))
        else:
            spec = get_spec(subject)
            size = tuple(spec.input_size)
            add_eager(subject, size, 1, functools.partial(create_model, subject, input_size=size, calibrate_bn=False))
    _sample_all(timed, runs, warmup, rounds, progress)
    cpu = cpu_summary()
    for t in timed:
        t.row.ratio_to_eager = t.row.median_ms / eager[t.eager_key].row.median_ms
        t.row.cpu = cpu
    return [t.row for t in timed]


def write_json(rows: list[BenchRow], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(r) for r in rows], indent=2))


def render_table(rows: list[BenchRow], width: int = 80):
    """The latency table; under 100 columns the runtime goes on a second line under the subject, so an
    80-column terminal shows whole artifact names instead of folding every column."""
    from rich.table import Table
    from rich.text import Text

    wide = width >= 100
    table = Table(
        title=f"latency (ms), batch as exported, {rows[0].threads if rows else '?'} threads",
        caption=f"on {rows[0].cpu}" if rows and rows[0].cpu else None,
    )
    table.add_column("subject" if wide else "subject / runtime", overflow="fold")
    if wide:
        table.add_column("runtime", overflow="fold")
    table.add_column("input")
    for col in ("median", "p90", "x eager"):
        table.add_column(col, justify="right")
    for r in rows:
        subject = [r.subject, r.runtime] if wide else [Text.assemble(r.subject, "\n", (r.runtime, "dim"))]
        table.add_row(
            *subject,
            "x".join(map(str, r.input_shape)),
            f"{r.median_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.ratio_to_eager:.2f}" if r.ratio_to_eager is not None else "",
        )
    return table


@dataclass
class BenchExport:
    """One artifact exported for a benchmark run, with its parity verdict (timed whether it passed or not)."""

    folder: Path
    target: str
    passed: bool
    report: dict
    seconds: float


def export_for_bench(
    models: list[str],
    targets: list[tuple[str, str]],
    out: Path,
    *,
    size=None,
    log=print,
    also_catch: tuple[type[Exception], ...] = (),
) -> list[BenchExport]:
    """Export every model to every (target, precision) with the parity gate on.

    A failed gate is logged and the kept artifact still returned: speed and parity are separate facts.
    An export that fails otherwise (a ``LightdeployError``, or one of ``also_catch``) is logged and skipped.
    """
    from lightdeploy.errors import LightdeployError, ParityError
    from lightdeploy.pipeline import export
    from lightdeploy.runtimes.manifest import read_manifest

    done = []
    for model in models:
        for target, precision in targets:
            t0 = time.perf_counter()
            try:
                outcome = export(model, target, precision=precision, input_size=size, out=out)
                folder, report, passed = outcome.folder, outcome.report.as_dict(), True
            except ParityError as exc:  # the artifact is kept (as NAME.failed)
                folder = Path(exc.folder)
                report, passed = read_manifest(folder)["parity"], False
                log(f"[red]{exc}[/]")
            except (LightdeployError, *also_catch) as exc:
                log(f"[red]{model} -> {target}/{precision}: {type(exc).__name__}: {str(exc)[:300]}[/]")
                continue
            done.append(BenchExport(folder, target, passed, report, time.perf_counter() - t0))
    return done


def parity_table(exports: list[BenchExport], extra: dict[str, Callable[[BenchExport], str]] | None = None):
    """One row per output of each export: max abs, cosine, task metrics, export seconds, ``extra`` columns."""
    from rich.table import Table

    extra = extra or {}
    table = Table(title="parity against eager (the gate's inputs)")
    for col in ("artifact", "passed", "output", "max abs", "cosine", "task", "export s", *extra):
        table.add_column(col)
    for e in exports:
        task = ", ".join(f"{k}={v:.3g}" for k, v in e.report["task"].items() if isinstance(v, float))
        firsts = [e.folder.name, "yes" if e.passed else "NO"]
        lasts = [task, f"{e.seconds:.1f}", *(fn(e) for fn in extra.values())]
        for i, (name, s) in enumerate(e.report["outputs"].items()):
            first = i == 0
            table.add_row(
                *(firsts if first else ["", ""]),
                name,
                f"{s['max_abs']:.3g}",
                f"{s['cosine']:.6f}",
                *(lasts if first else [""] * len(lasts)),
            )
    return table


def write_plot(rows: list[BenchRow], path: str | Path) -> None:
    """A horizontal bar chart of median latency (PNG, Pillow only)."""
    from PIL import Image, ImageDraw

    from lightdeploy.draw import _font

    width, bar_h, left = 900, 26, 330
    img = Image.new("RGB", (width, 40 + bar_h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    font = _font(14)
    top = max((r.median_ms for r in rows), default=1.0)
    draw.text((8, 8), "median latency (ms), lower is better", fill="black", font=font)
    for i, r in enumerate(rows):
        y = 34 + i * bar_h
        draw.text((8, y + 4), f"{r.subject} [{r.runtime}]"[:44], fill="black", font=font)
        length = int((width - left - 90) * r.median_ms / top)
        draw.rectangle(
            [left, y + 3, left + length, y + bar_h - 5], fill="#4c78a8" if r.runtime != "eager" else "#bbbbbb"
        )
        draw.text((left + length + 6, y + 4), f"{r.median_ms:.2f}", fill="black", font=font)
    img.save(path)
