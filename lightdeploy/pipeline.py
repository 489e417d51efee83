"""The export pipeline: eager model -> exporter -> manifest -> parity gate -> artifact in place.

``export`` is what ``lightdeploy export`` runs and what the Python API offers; ``parity`` re-runs the
gate on an artifact (``lightdeploy parity DIR``).  Validation happens before any work; the artifact
is built in a temporary folder and renamed into place (docs/design.md#artifact).
"""

from __future__ import annotations

import tempfile
import time
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

    @property
    def notes(self) -> list[str]:
        """The manifest's notes with ``{artifact}`` (kept as a placeholder: no path in the manifest) filled in."""
        return [n.replace("{artifact}", str(self.folder)) for n in self.manifest.get("notes", [])]


def artifact_name(model: str, target: str, precision: str) -> str:
    return f"{model}-{target}-{precision}"


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
    from lightdeploy.artifact import check_writable, commit_verdict, staging_folder, write_export_log, write_manifest
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
    clock = {"start": time.perf_counter()}
    model = create_model(model_name, num_classes=num_classes, weights=weights, input_size=size)
    clock["model"] = time.perf_counter()
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
        clock["export"] = time.perf_counter()
        manifest = write_manifest(
            tmp, manifest_for(job, result, num_classes=num_classes, weights=weights, seed=DEFAULT_SEED)
        )
        report = None
        if parity:
            progress("running the parity gate")
            report = gate(tmp, manifest, job.model, exporter, result, images, progress)
            report.artifact = final.name
            manifest = write_manifest(tmp, {**manifest, "parity": report.as_dict()})
        clock["parity"] = time.perf_counter()
        write_export_log(tmp, _steps(clock), {"exporter": result.log})
        passed = report is None or report.passed
        where = commit_verdict(tmp, final, passed)
    if not passed:
        kept = f"{final} is unchanged" if final.exists() else f"nothing was written at {final}"
        raise ParityError(
            report.summary() + f". The failed artifact is kept at {where} with its report for inspection; {kept}.",
            folder=where,
        )
    return ExportOutcome(final, manifest, report)


def _steps(clock: dict[str, float]) -> dict[str, float]:
    """Seconds per step from the clock readings (model, export, parity), and the total."""
    names = [k for k in clock if k != "start"]
    marks = [clock["start"]] + [clock[k] for k in names]
    return {**{k: b - a for k, a, b in zip(names, marks, marks[1:])}, "total": marks[-1] - marks[0]}


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


def parity(folder: str | Path, *, images=None, threads: int | None = None, model=None, weights=None):
    """Re-run the gate on an exported artifact: eager is rebuilt from its manifest unless given, and a
    backend that cannot run here is judged by its exporter's estimator.

    ``weights``: the weights file the artifact was exported from, checked against the sha256 its
    manifest records; without it the recorded file name is looked up beside the artifact and in the
    current folder.
    """
    from lightdeploy.parity import run_parity
    from lightdeploy.runtimes.manifest import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder, verify=True)
    exporter = exporter_for_backend(manifest["backend"])
    if model is None:
        from lightdeploy.factory import eager_from_manifest
        from lightdeploy.weights import recorded_weights

        found = recorded_weights(manifest["source"].get("weights"), weights, search=[folder.parent, Path.cwd()])
        model = eager_from_manifest(manifest, weights=found)
    return run_parity(folder, model=model, images=images, threads=threads, estimator=exporter.estimator)
