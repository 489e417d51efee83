"""The export pipeline: eager model -> exporter -> manifest -> parity gate -> artifact in place.

``export`` is what ``lightdeploy export`` runs and what the Python API offers; ``parity`` re-runs the
gate on an artifact (``lightdeploy parity DIR``).  Validation happens before any work; the artifact
is built in a temporary folder and renamed into place (docs/design.md#artifact).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightdeploy.errors import ParityError, UsageError
from lightdeploy.exporters import exporter_for_backend, get_exporter
from lightdeploy.exporters.base import PRECISIONS, ExportOptions, ExportResult
from lightdeploy.jobs import make_job, manifest_for

DEFAULT_OUT = Path("artifacts")


@dataclass
class ExportOutcome:
    folder: Path
    manifest: dict
    report: object | None  # ParityReport, or None with --no-parity


def artifact_name(model: str, target: str, precision: str) -> str:
    """MODEL-TARGET-PRECISION; named weights' MODEL:TAG becomes MODEL-TAG (no ':' in folder names)."""
    return f"{model.replace(':', '-')}-{target}-{precision}"


def export(
    model_name: str,
    target: str,
    *,
    precision: str = "fp32",
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    opset: int = 18,
    calib_dir: str | None = None,
    nhwc: bool = False,
    out: str | Path = DEFAULT_OUT,
    parity: bool = True,
    images_dir: str | None = None,
    extra: dict | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> ExportOutcome:
    """Export one model to one target and gate it; raise ParityError (artifact kept) on a mismatch."""
    from lightdeploy.artifact import check_writable, commit, staging_folder, write_manifest
    from lightdeploy.factory import DEFAULT_SEED, create_model
    from lightdeploy.models.registry import get_spec

    spec = get_spec(model_name)
    exporter = get_exporter(target)
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision not in exporter.precisions:
        raise UsageError(
            f"Target {target!r} exports {', '.join(exporter.precisions)} only; {precision} is not offered. "
            "Choose another target for that precision."
        )
    if batch < 1:
        raise UsageError(f"--batch must be at least 1; got {batch}.")
    if dynamic_batch and spec.task == "detect":
        # The detectors loop over the batch in Python (per-image NMS), so the traced graph has the
        # batch it was exported with; the symbolic-dims check would only say "fixed" without why.
        raise UsageError(
            f"{model_name} exports with a static batch (its per-image NMS is unrolled over "
            "the batch); use --batch N instead of --dynamic-batch."
        )
    size = spec.check_input_size(input_size or spec.input_size)
    out = Path(out)
    final = out / artifact_name(model_name, target, precision)
    check_writable(out)
    images = None
    if images_dir:
        from lightdeploy.samples import images_from_dir

        images = images_from_dir(images_dir)

    progress(f"building {model_name}")
    model = create_model(model_name, num_classes=num_classes, weights=weights, input_size=size)
    options = ExportOptions(
        target=target,
        precision=precision,
        input_size=size,
        batch=batch,
        dynamic_batch=dynamic_batch,
        dynamic_size=dynamic_size,
        opset=opset,
        calib_dir=calib_dir,
        nhwc=nhwc,
        extra=dict(extra or {}),
    )
    job = make_job(spec, model, options)

    with staging_folder(final) as tmp:
        progress(f"exporting to {target} ({precision})")
        result = exporter.export(job, tmp)
        notes = [n.replace("{artifact}", str(final)) for n in result.info.get("notes", [])]
        result.info["notes"] = notes + calibration_warnings(result.info)
        manifest = write_manifest(
            tmp, manifest_for(job, result, num_classes=num_classes, weights=weights, seed=DEFAULT_SEED)
        )
        report = None
        if parity:
            progress("running the parity gate")
            report = gate(tmp, manifest, job.model, exporter, result, images, progress)
            report.artifact = final.name
            manifest = write_manifest(tmp, {**manifest, "parity": report.as_dict()})
        commit(tmp, final)
    if report is not None and not report.passed:
        raise ParityError(report.summary() + f". The artifact is kept at {final} for inspection.")
    return ExportOutcome(final, manifest, report)


def calibration_warnings(info: dict) -> list[str]:
    """The calibration set's warnings (e.g. too few --calib images), wherever the exporter recorded it."""
    found = []
    for value in [info, *info.values()]:
        calib = value.get("calibration") if isinstance(value, dict) else None
        if isinstance(calib, dict) and calib.get("warning"):
            found.append(calib["warning"])
    return found


def gate(
    folder: Path,
    manifest: dict,
    model,
    exporter,
    result: ExportResult,
    images=None,
    progress: Callable[[str], None] = lambda msg: None,
):
    """The parity report of a freshly exported artifact; reduced precision also gates its float graph."""
    from lightdeploy.parity import run_parity

    report = run_parity(folder, model=model, images=images, estimator=exporter.estimator)
    if result.float_twin is not None:
        progress("gating the float graph before reduced precision (fp32 row)")
        report.add_float_graph(_gate_float_twin(result, manifest, model, images, exporter.estimator))
    return report


def _gate_float_twin(result: ExportResult, manifest: dict, model, images, estimator):
    """Write the exporter's float twin (``ExportResult.float_twin``) into a scratch folder outside the
    artifact, give it an fp32 manifest, and run the gate on it."""
    from lightdeploy.artifact import write_manifest
    from lightdeploy.parity import run_parity

    with tempfile.TemporaryDirectory(prefix="lightdeploy-float-twin-") as scratch:
        folder = Path(scratch)
        backend_file = result.float_twin(folder)
        keep = {k: v for k, v in manifest.items() if k not in ("files", "parity")}
        write_manifest(folder, {**keep, "precision": "fp32", "backend_file": backend_file})
        return run_parity(folder, model=model, images=images, estimator=estimator)


def parity(folder: str | Path, *, images=None, threads: int | None = None, model=None):
    """Re-run the gate on an exported artifact: eager is rebuilt from its manifest unless given, and a
    backend that cannot run here is judged by its exporter's estimator."""
    from lightdeploy.parity import run_parity
    from lightdeploy.runtimes.manifest import read_manifest

    manifest = read_manifest(folder, verify=True)
    exporter = exporter_for_backend(manifest["backend"])
    return run_parity(folder, model=model, images=images, threads=threads, estimator=exporter.estimator)
