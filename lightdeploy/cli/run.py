"""The commands that inspect, run, time and score: list, info, predict, bench, eval, triton."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from lightdeploy.cli.common import Progress, console, err, handle_errors
from lightdeploy.errors import UsageError


# ------------------------------------------------------------------------------------------ list / info
@handle_errors
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the registered models with task, input size, params and MACs."""
    from lightdeploy.modelinfo import complexity
    from lightdeploy.models.registry import get_spec, list_models

    rows = []
    for name in list_models():
        spec = get_spec(name)
        params, macs = complexity(name)
        rows.append(
            {
                "name": name,
                "task": spec.task,
                "input_size": list(spec.input_size),
                "params": params,
                "macs": macs,
                "alias_of": spec.alias_of,
            }
        )
    if as_json:
        console.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title="lightdeploy models (MACs at the default input size, batch 1)")
    for col in ("name", "task", "input", "params", "MACs"):
        table.add_column(col)
    for r in rows:
        name = r["name"] + (f" (= {r['alias_of']})" if r["alias_of"] else "")
        table.add_row(
            name, r["task"], "x".join(map(str, r["input_size"])), f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e6:.1f}M"
        )
    console.print(table)


@handle_errors
def info(target: str = typer.Argument(..., metavar="MODEL|ARTIFACT_DIR")):
    """Details of a registered model, or of an exported artifact."""
    from lightdeploy.modelinfo import artifact_info, model_info

    path = Path(target)
    console.print(artifact_info(path) if path.is_dir() else model_info(target))


# ------------------------------------------------------------------------------------------ predict
@handle_errors
def predict(
    artifact: Path = typer.Argument(..., metavar="ARTIFACT_DIR"),
    images: list[Path] = typer.Argument(..., metavar="IMAGE..."),
    out: Path = typer.Option(Path("predictions"), "--out"),
    threads: int | None = typer.Option(None, "--threads"),
    device: str | None = typer.Option(
        None, "--device", help="OpenVINO device (CPU, GPU, NPU, AUTO) or ONNX Runtime providers in order (cuda,cpu)."
    ),
    allow_unverified: bool = typer.Option(
        False, "--allow-unverified", help="Run an artifact whose parity gate failed or never ran."
    ),
):
    """Run an artifact on images and write each result drawn on its image as a PNG."""
    from lightdeploy import runtimes
    from lightdeploy.draw import DRAWERS
    from lightdeploy.runtimes.preprocess import load_image

    model = runtimes.load(artifact, threads=threads, device=device, allow_unverified=allow_unverified)
    if model.info["verdict"].startswith("UNVERIFIED"):
        err.print(f"[bold yellow]warning:[/] {escape(model.info['verdict'])}", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    for image in images:
        rgb = load_image(image)
        result = model.predict(rgb)
        path = DRAWERS[model.task](rgb, result, out / f"{Path(image).stem}-{artifact.name}.png")
        console.print(f"{image} -> {path}", highlight=False)
        if model.task == "classify":
            for p in result:
                console.print(f"  {p.label}: {p.probability:.4f}", highlight=False)


# -------------------------------------------------------------------------------------------- bench
@handle_errors
def bench(
    subjects: list[str] = typer.Argument(None, metavar="MODEL|ARTIFACT_DIR..."),
    runs: int = typer.Option(50, "--runs"),
    warmup: int = typer.Option(10, "--warmup"),
    threads: int = typer.Option(2, "--threads"),
    rounds: int = typer.Option(
        1,
        "--rounds",
        help="Split the runs into this many rounds that take every subject in turn, all loaded at once: "
        "ratios between subjects hold on a host whose speed drifts.",
    ),
    json_out: Path | None = typer.Option(None, "--json"),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write a PNG: latency bars, or with --matrix latency vs parity."
    ),
    allow_unverified: bool = typer.Option(
        False, "--allow-unverified", help="Time artifacts whose parity gate failed or never ran too."
    ),
    matrix: bool = typer.Option(
        False,
        "--matrix",
        help="Export MODELS (default: every registered model) to every CPU backend x precision, "
        "gate and time each artifact: one table.",
    ),
    markdown: Path | None = typer.Option(None, "--markdown", help="--matrix: write the table as Markdown."),
    resume: bool = typer.Option(
        False, "--resume", help="--matrix: keep the cells already in --json, run the missing ones."
    ),
    retime: bool = typer.Option(
        False,
        "--retime",
        help="--matrix --resume: time again the kept cells timed on a shared machine (load above the core "
        "count), from their artifact folders.",
    ),
    out: Path = typer.Option(Path("matrix-artifacts"), "--out", help="--matrix: where the artifacts go."),
    cells: list[str] = typer.Option(
        None, "--to", metavar="TARGET/PRECISION", help="--matrix: only these cells (default: every CPU one)."
    ),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Batch latency (median, p90) of eager PyTorch and each artifact, with ratios to eager.

    With --matrix: models x CPU backends x precisions, each exported, gated and timed (lightdeploy.matrix).
    """
    from lightdeploy import bench as benchmod

    if runs < 1 or warmup < 0 or threads < 1:
        raise UsageError("--runs and --threads must be at least 1, --warmup at least 0.")
    progress = Progress(quiet)
    if matrix:
        if rounds != 1:
            raise UsageError("--rounds times artifacts given by folder; --matrix times each cell as it is made.")
        _matrix(subjects, runs, warmup, threads, json_out, plot, markdown, resume, retime, out, cells, progress)
        return
    if not subjects:
        raise UsageError("Name the models or artifact folders to time (or use --matrix).")
    if markdown or resume or retime or cells:
        raise UsageError("--markdown, --resume, --retime and --to belong to --matrix.")
    rows = benchmod.bench(
        subjects,
        runs=runs,
        warmup=warmup,
        threads=threads,
        rounds=rounds,
        progress=progress,
        allow_unverified=allow_unverified,
    )
    progress.done()
    console.print(benchmod.render_table(rows, console.width))
    if json_out:
        benchmod.write_json(rows, json_out)
    if plot:
        benchmod.write_plot(rows, plot)


def _matrix(models, runs, warmup, threads, json_out, plot, markdown, resume, retime, out, cells, progress) -> None:
    import shlex
    import sys

    from lightdeploy import matrix, matrix_report

    if any(Path(m).is_dir() for m in models or []):
        raise UsageError("--matrix takes model names (it exports them itself), not artifact folders.")
    if resume and not (json_out and json_out.is_file()):
        raise UsageError("--resume reads the cells of an earlier run from --json FILE: give an existing file.")
    if retime and not resume:
        raise UsageError("--retime times the cells of an earlier run again: add --resume and its --json FILE.")
    done, earlier_meta = matrix_report.read_run(json_out) if resume else (None, {})
    targets = matrix.parse_cells(cells) if cells else matrix.TARGETS
    command = "lightdeploy " + shlex.join(sys.argv[1:])
    meta = matrix_report.run_meta(threads, runs, command)
    if resume:
        meta = matrix_report.resumed_meta(earlier_meta, meta)
    earlier = matrix_report.run_commands(earlier_meta)
    if earlier:  # until a cell runs, the table is the earlier runs' (a resume with nothing missing re-renders it)
        meta["commands"] = earlier

    def checkpoint(cells_so_far) -> None:  # each finished cell is on disk: an interrupted run resumes
        meta["commands"] = [*earlier, command]  # the table holds every run's cells: it names every run
        if json_out:
            matrix_report.write_json(cells_so_far, json_out, meta)

    cells = matrix.run_matrix(
        models or matrix.default_models(),
        out,
        targets=targets,
        threads=threads,
        runs=runs,
        warmup=warmup,
        done=done,
        progress=progress,
        checkpoint=checkpoint,
        retime=retime,
    )
    progress.done()
    console.print(matrix_report.render_table(cells, console.width))
    for path, write in ((json_out, matrix_report.write_json), (markdown, matrix_report.write_markdown)):
        if path:
            write(cells, path, meta)
    if plot:
        from lightdeploy.matrix_plot import write_plot

        write_plot(cells, plot)


# --------------------------------------------------------------------------------------------- eval
@handle_errors
def eval_cmd(
    subjects: list[str] = typer.Argument(..., metavar="MODEL|ARTIFACT_DIR..."),
    data: Path = typer.Option(..., "--data", help="Labelled set: ImageFolder, COCO JSON, or images/ + masks/."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the rows as JSON."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Evaluate artifacts whose gate failed."),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Accuracy of eager PyTorch and of each artifact on a labelled set, side by side with the delta.

    Classification: DATA/<class name or index>/<image>.  Detection: DATA/annotations.json (COCO) with the
    images in DATA/images/.  Segmentation: DATA/images/<stem>.jpg and DATA/masks/<stem>.png (class index
    per pixel, 255 = ignore).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lightdeploy.evaluation.run import evaluate, render_table, write_json

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=quiet, transient=True) as progress:
        rows = evaluate(subjects, data, allow_unverified=allow_unverified, progress=progress)
    console.print(render_table(rows))
    if json_out:
        write_json(rows, json_out)


# ------------------------------------------------------------------------------------------- triton
@handle_errors
def triton(
    artifacts: list[Path] = typer.Argument(..., metavar="ARTIFACT_DIR..."),
    repo: Path = typer.Option(..., "--repo", help="The Triton model repository to write (one folder per artifact)."),
    instances: int = typer.Option(1, "--instances", help="Model instances (instance_group count)."),
    max_batch: int | None = typer.Option(
        None, "--max-batch", help="max_batch_size for dynamic-batch artifacts (default 8; TensorRT: its profile)."
    ),
    mode: str = typer.Option("latency", "--mode", help="OpenVINO's performance hint: latency or throughput."),
    allow_unverified: bool = typer.Option(
        False, "--allow-unverified", help="Include artifacts whose parity gate failed or never ran."
    ),
):
    """Write a Triton Inference Server model repository from ONNX, OpenVINO and TensorRT engine artifacts."""
    from lightdeploy.triton import write_repository

    written = write_repository(
        artifacts, repo, instances=instances, max_batch=max_batch, mode=mode, allow_unverified=allow_unverified
    )
    for folder in written:
        console.print(f"{folder}/config.pbtxt", highlight=False)
    console.print(f"serve it: docker run ... tritonserver --model-repository={repo} (docs/triton.md)", highlight=False)
