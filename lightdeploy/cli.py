"""The ``lightdeploy`` command line (typer + rich).  The only place that turns errors into exit codes.

Exit codes (docs/design.md#exit-codes): 0 success, 1 parity failed, 2 bad input or usage, 3 missing
dependency or unsupported environment.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from lightdeploy.errors import LightdeployError, MissingDependencyError, UsageError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Lightweight vision models from PyTorch to the edge, with parity proven against eager.",
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # soft wrap: messages stay whole lines when piped


# The export side's packages: a runtime-only install (`pip install lightdeploy[onnxruntime]`) lacks them.
EXPORT_PACKAGES = {"torch", "torchvision", "skimage", "safetensors"}


def _handle_errors(fn):
    """Turn LightdeployError into its message and exit code; anything else is a bug and shows a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            try:
                return fn(*args, **kwargs)
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] not in EXPORT_PACKAGES:
                    raise
                raise MissingDependencyError(
                    f"`lightdeploy {fn.__name__.removesuffix('_cmd')}` needs PyTorch and the export tools "
                    f"({exc.name!r} is not installed): this install runs artifacts only. Install the export side "
                    "with: pip install 'lightdeploy[export,onnx]' (or '.[cpu]' for every CPU target)."
                ) from None
        except LightdeployError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _progress(quiet: bool):
    if quiet:
        return lambda msg: None
    return lambda msg: err.print(f"[dim]… {msg}[/]", highlight=False)


# ------------------------------------------------------------------------------------------ list / info
@app.command("list")
@_handle_errors
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


@app.command()
@_handle_errors
def info(target: str = typer.Argument(..., metavar="MODEL|ARTIFACT_DIR")):
    """Details of a registered model, or of an exported artifact."""
    from lightdeploy.modelinfo import artifact_info, model_info

    path = Path(target)
    console.print(artifact_info(path) if path.is_dir() else model_info(target))


# ------------------------------------------------------------------------------------------- export
@app.command()
@_handle_errors
def export(
    model: str = typer.Argument(
        ...,
        metavar="MODEL|FACTORY",
        help="A registered model name (see `lightdeploy list`), or your own model's factory: "
        "pkg.module:function or path/to/file.py:function (it returns an nn.Module; give --task and --input-size).",
    ),
    to: list[str] = typer.Option(..., "--to", help="Target(s): repeat --to for several."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 weights/compute where the target offers it."),
    int8: bool = typer.Option(False, "--int8", help="INT8 post-training quantisation."),
    calib: Path | None = typer.Option(None, "--calib", help="Folder of calibration images for --int8."),
    input_size: tuple[int, int] | None = typer.Option(None, "--input-size", help="H W"),
    batch: int = typer.Option(1, "--batch"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch"),
    dynamic_size: bool = typer.Option(False, "--dynamic-size", help="Symbolic H and W (checked at a second size)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="State dict (.pt/.pth, loaded weights_only) or .safetensors."
    ),
    weights_key: str | None = typer.Option(
        None, "--weights-key", help="The checkpoint entry that holds the state dict (e.g. state_dict_ema)."
    ),
    num_classes: int | None = typer.Option(None, "--num-classes"),
    task: str | None = typer.Option(None, "--task", help="Your own model's task: classify, detect or segment."),
    name: str | None = typer.Option(None, "--name", help="Your own model's artifact name (default: the factory's)."),
    mean: tuple[float, float, float] | None = typer.Option(None, "--mean", help="Your own model's RGB mean on [0, 1]."),
    std: tuple[float, float, float] | None = typer.Option(None, "--std", help="Your own model's RGB std on [0, 1]."),
    opset: int = typer.Option(18, "--opset"),
    nhwc: bool = typer.Option(False, "--nhwc", help="NHWC input layout (TFLite)."),
    raw_heads: bool = typer.Option(
        False, "--raw-heads", help="Detectors: also output the raw head tensors before NMS."
    ),
    out: Path = typer.Option(Path("artifacts"), "--out"),
    no_parity: bool = typer.Option(False, "--no-parity", help="Skip the parity gate (not recommended)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of images for the parity gate."),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Export MODEL (or your own model's FACTORY) to each --to target, then run the parity gate against eager."""
    from lightdeploy.pipeline import check_request
    from lightdeploy.pipeline import export as run_export

    if fp16 and int8:
        raise UsageError("--fp16 and --int8 exclude each other; give one.")
    if calib and not int8:
        raise UsageError("--calib is for --int8 only.")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    check_request(to, precision)  # every target and the precision, before any work
    subject = _subject(model, task, input_size, name, mean, std, num_classes, weights, weights_key, _progress(quiet))
    own = not isinstance(subject, str)  # your own model comes with its weights and class count
    extra = {"raw_heads": True} if raw_heads else {}
    failed = False
    for target in to:
        try:
            outcome = run_export(
                subject,
                target,
                precision=precision,
                input_size=input_size,
                batch=batch,
                dynamic_batch=dynamic_batch,
                dynamic_size=dynamic_size,
                weights=None if own else weights,
                weights_key=None if own else weights_key,
                num_classes=None if own else num_classes,
                opset=opset,
                calib_dir=str(calib) if calib else None,
                nhwc=nhwc,
                out=out,
                parity=not no_parity,
                images_dir=str(images) if images else None,
                extra=extra,
                progress=_progress(quiet),
            )
        except LightdeployError as exc:
            if exc.exit_code != 1:
                raise
            failed = True
            err.print(f"[bold red]{escape(str(exc))}[/]", highlight=False)
            continue
        _print_outcome(outcome, quiet)
    if failed:
        raise typer.Exit(1)


def _subject(model, task, input_size, name, mean, std, num_classes, weights, weights_key, progress):
    """A registered name as it is; a factory reference built and checked (``usermodel.from_factory``)."""
    from lightdeploy.references import is_reference

    if not is_reference(model):
        from lightdeploy.models.registry import get_spec

        given = [
            flag for flag, value in (("--task", task), ("--name", name), ("--mean", mean), ("--std", std)) if value
        ]
        if given:
            raise UsageError(f"{', '.join(given)} describe your own model's factory; {model!r} is a registered model.")
        get_spec(model)
        return model
    from lightdeploy.usermodel import from_factory

    if task is None or input_size is None:
        raise UsageError(
            f"{model!r} is a factory: give its task and input size, e.g. --task classify --input-size 224 224."
        )
    preprocess = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    progress(f"building {model}")
    return from_factory(
        model,
        task=task,
        input_size=input_size,
        name=name,
        num_classes=num_classes,
        weights=weights,
        weights_key=weights_key,
        preprocess=preprocess,
    )


def _print_outcome(outcome, quiet: bool) -> None:
    from lightdeploy.parity.report import render_table

    if outcome.report is not None and not quiet:
        console.print(render_table(outcome.report))
    status = outcome.report.summary() if outcome.report is not None else "parity NOT RUN (--no-parity)"
    console.print(f"[bold]{outcome.folder}[/]: {status}", highlight=False)
    for note in outcome.notes:
        console.print(f"  note: {note}", highlight=False)


# ------------------------------------------------------------------------------------------- parity
@app.command()
@_handle_errors
def parity(
    artifacts: list[Path] = typer.Argument(..., metavar="ARTIFACT_DIR..."),
    images: Path | None = typer.Option(None, "--images", help="Folder of images to add as inputs' photographs."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the reports as JSON."),
    junit: Path | None = typer.Option(None, "--junit", help="Write the reports as JUnit XML."),
    threads: int | None = typer.Option(None, "--threads"),
    weights: Path | None = typer.Option(
        None, "--weights", help="The weights file the artifact was exported from (checked by its sha256)."
    ),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Re-run the parity gate on exported artifacts (eager is rebuilt from each manifest)."""
    from lightdeploy.parity import write_json, write_junit
    from lightdeploy.parity.report import render_table
    from lightdeploy.pipeline import parity as run_gate
    from lightdeploy.samples import images_from_dir

    imgs = images_from_dir(images) if images else None
    reports = []
    for folder in artifacts:
        _progress(quiet)(f"parity of {folder}")
        report = run_gate(folder, images=imgs, threads=threads, weights=weights)
        reports.append(report)
        if not quiet:
            console.print(render_table(report))
        console.print(report.summary(), highlight=False)
    if json_out:
        write_json(reports, json_out)
    if junit:
        write_junit(reports, junit)
    if not all(r.passed for r in reports):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------ predict
@app.command()
@_handle_errors
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
@app.command()
@_handle_errors
def bench(
    subjects: list[str] = typer.Argument(..., metavar="MODEL|ARTIFACT_DIR..."),
    runs: int = typer.Option(50, "--runs"),
    warmup: int = typer.Option(10, "--warmup"),
    threads: int = typer.Option(2, "--threads"),
    json_out: Path | None = typer.Option(None, "--json"),
    plot: Path | None = typer.Option(None, "--plot", help="Write a bar chart PNG."),
    allow_unverified: bool = typer.Option(
        False, "--allow-unverified", help="Time artifacts whose parity gate failed or never ran too."
    ),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Batch latency (median, p90) of eager PyTorch and each artifact, with ratios to eager."""
    from lightdeploy import bench as benchmod

    if runs < 1 or warmup < 0 or threads < 1:
        raise UsageError("--runs and --threads must be at least 1, --warmup at least 0.")
    rows = benchmod.bench(
        subjects,
        runs=runs,
        warmup=warmup,
        threads=threads,
        progress=_progress(quiet),
        allow_unverified=allow_unverified,
    )
    console.print(benchmod.render_table(rows))
    if json_out:
        benchmod.write_json(rows, json_out)
    if plot:
        benchmod.write_plot(rows, plot)


# --------------------------------------------------------------------------------------------- eval
@app.command("eval")
@_handle_errors
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


# ----------------------------------------------------------------------------------- check / build
@app.command()
@_handle_errors
def check(
    subject: str = typer.Argument(..., metavar="MODEL|FACTORY|ONNX_FILE"),
    to: str = typer.Option(..., "--to", help="Target whose operator support to check: trt, openvino or tflite."),
    input_size: tuple[int, int] | None = typer.Option(None, "--input-size", help="H W"),
    task: str | None = typer.Option(None, "--task", help="Your own model's task (with a FACTORY)."),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Passed to a FACTORY that takes it."),
    opset: int = typer.Option(18, "--opset"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Check every op against the target's operator support, before any build (exit 2 if unsupported)."""
    from lightdeploy.checks import check as run_check
    from lightdeploy.references import is_reference

    model = subject
    if is_reference(subject):
        model = _subject(subject, task, input_size, None, None, None, num_classes, None, None, lambda msg: None)
    report = run_check(model, to, input_size=input_size, opset=opset)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        console.print(report)
    if not report.supported:
        raise typer.Exit(2)


@app.command()
@_handle_errors
def build(
    artifact: Path = typer.Argument(..., metavar="ARTIFACT_DIR"),
    no_parity: bool = typer.Option(False, "--no-parity"),
    images: Path | None = typer.Option(None, "--images"),
    weights: Path | None = typer.Option(None, "--weights", help="The weights file the plan was exported from."),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Build the TensorRT engine of a build plan (on the GPU machine), then run the parity gate on it.
    An engine that fails its gate is kept as ARTIFACT_DIR.failed; the plan stays in place."""
    from lightdeploy.build import build as build_engine
    from lightdeploy.parity.report import render_table

    report = build_engine(
        artifact,
        parity=not no_parity,
        images_dir=str(images) if images else None,
        weights=weights,
        progress=_progress(quiet),
    )
    if report is None:
        console.print(f"[bold]{artifact}[/]: engine built; parity NOT RUN (--no-parity)", highlight=False)
        return
    if not quiet:
        console.print(render_table(report))
    console.print(f"[bold]{artifact}[/]: {report.summary()}", highlight=False)
    if not report.passed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- triton
@app.command()
@_handle_errors
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
