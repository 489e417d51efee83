"""The commands that make and check artifacts: export, parity, check, build."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from lightdeploy.cli.common import Progress, console, err, handle_errors
from lightdeploy.errors import LightdeployError, UsageError


# ------------------------------------------------------------------------------------------- export
@handle_errors
def export(
    model: str = typer.Argument(
        ...,
        metavar="MODEL|FACTORY",
        help="A registered model name (see `lightdeploy list`), or your own model's factory: "
        "pkg.module:function or path/to/file.py:function (it returns an nn.Module; give --task and --input-size).",
    ),
    to: list[str] = typer.Option(
        ...,
        "--to",
        help="Target(s): onnx, openvino, tflite, trt (also ort, ov, litert, tensorrt/engine); repeat --to for several.",
    ),
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
    progress = Progress(quiet)
    subject = _subject(model, task, input_size, name, mean, std, num_classes, weights, weights_key, progress)
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
                progress=progress,
            )
        except LightdeployError as exc:
            if exc.exit_code != 1:
                raise
            progress.done()
            failed = True
            err.print(f"[bold red]{escape(str(exc))}[/]", highlight=False)
            continue
        progress.done()
        _print_outcome(outcome, quiet)
    if failed:
        raise typer.Exit(1)


def _is_factory(text: str) -> bool:
    """A factory reference (``pkg.module:fn``, ``file.py:fn``) unless it names registered weights:
    ``MODEL:TAG`` with MODEL in the registry (``mobilenetv2:imagenet``; an unknown TAG then gets the
    registry's error with the closest names, not a factory's)."""
    from lightdeploy.models.registry import is_registered
    from lightdeploy.references import is_reference

    return is_reference(text) and not is_registered(text) and not is_registered(text.partition(":")[0])


def _subject(model, task, input_size, name, mean, std, num_classes, weights, weights_key, progress):
    """A registered name as it is; a factory reference built and checked (``usermodel.from_factory``)."""
    if not _is_factory(model):
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
@handle_errors
def parity(
    artifacts: list[Path] = typer.Argument(..., metavar="ARTIFACT_DIR..."),
    images: Path | None = typer.Option(None, "--images", help="Folder of images to add as inputs' photographs."),
    json_out: Path | None = typer.Option(
        None, "--json", help='Write the reports as JSON (with --localize, each with its "localization").'
    ),
    junit: Path | None = typer.Option(None, "--junit", help="Write the reports as JUnit XML."),
    threads: int | None = typer.Option(None, "--threads"),
    weights: Path | None = typer.Option(
        None, "--weights", help="The weights file the artifact was exported from (checked by its sha256)."
    ),
    localize: bool = typer.Option(
        False,
        "--localize",
        help="Also find the first module whose output leaves the tolerance row (ONNX Runtime, OpenVINO, "
        "TFLite fp32/fp16).",
    ),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Re-run the parity gate on exported artifacts (eager is rebuilt from each manifest)."""
    from lightdeploy.parity import write_junit
    from lightdeploy.parity.report import render_table
    from lightdeploy.pipeline import eager_model
    from lightdeploy.pipeline import localize as run_localize
    from lightdeploy.pipeline import parity as run_gate
    from lightdeploy.samples import images_from_dir

    if localize:
        _check_localizable(artifacts)  # before any work: TensorRT and TFLite int8 are refused (exit 2)
    imgs = images_from_dir(images) if images else None
    reports, localizations = [], []
    progress = Progress(quiet)
    for folder in artifacts:
        progress(f"parity of {folder}")
        model = eager_model(folder, weights) if localize else None  # built once for both
        report = run_gate(folder, images=imgs, threads=threads, weights=weights, model=model, progress=progress)
        reports.append(report)
        found = None
        if localize:
            progress(f"localising {folder}")
            found = run_localize(folder, images=imgs, threads=threads, model=model)
        localizations.append(found)
        progress.done()
        if not quiet:
            console.print(render_table(report))
        console.print(report.summary(), highlight=False)
        if found is not None:
            console.print(escape(found.summary()), highlight=False)
    if json_out:
        entries = [r.as_dict() for r in reports]
        for entry, found in zip(entries, localizations):
            entry["localization"] = found.as_dict()
        json_out.write_text(json.dumps(entries, indent=2))
    if junit:
        write_junit(reports, junit)
    if not all(r.passed for r in reports):
        raise typer.Exit(1)


def _check_localizable(artifacts: list[Path]) -> None:
    from lightdeploy.localize import check_localizable
    from lightdeploy.runtimes.manifest import read_manifest

    for folder in artifacts:
        check_localizable(read_manifest(folder, verify=False))


# ----------------------------------------------------------------------------------- check / build
@handle_errors
def check(
    subject: str = typer.Argument(..., metavar="MODEL|FACTORY|ONNX_FILE"),
    to: str = typer.Option(
        ..., "--to", help="Target whose operator support to check: trt, openvino or tflite (or tensorrt, ov, litert)."
    ),
    input_size: tuple[int, int] | None = typer.Option(None, "--input-size", help="H W"),
    task: str | None = typer.Option(None, "--task", help="Your own model's task (with a FACTORY)."),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Passed to a FACTORY that takes it."),
    opset: int = typer.Option(18, "--opset"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Check every op against the target's operator support, before any build (exit 2 if unsupported)."""
    from lightdeploy.checks import check as run_check

    model = subject
    if _is_factory(subject):
        model = _subject(subject, task, input_size, None, None, None, num_classes, None, None, lambda msg: None)
    report = run_check(model, to, input_size=input_size, opset=opset)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        console.print(report)
    if not report.supported:
        raise typer.Exit(2)


@handle_errors
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

    progress = Progress(quiet)
    report = build_engine(
        artifact,
        parity=not no_parity,
        images_dir=str(images) if images else None,
        weights=weights,
        progress=progress,
    )
    progress.done()
    if report is None:
        console.print(f"[bold]{artifact}[/]: engine built; parity NOT RUN (--no-parity)", highlight=False)
        return
    if not quiet:
        console.print(render_table(report))
    console.print(f"[bold]{artifact}[/]: {report.summary()}", highlight=False)
    if not report.passed:
        raise typer.Exit(1)
