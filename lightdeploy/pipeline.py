"""The export pipeline: eager model -> exporter -> manifest -> parity gate -> artifact in place.

``export`` is what ``lightdeploy export`` runs, for a registered model or your own (``UserModel``);
``export_module`` is the Python API for your own models, on the same path; ``parity`` re-runs the
gate on an artifact (``lightdeploy parity DIR``).  Validation happens before any work; the artifact
is built in a temporary folder and renamed into place (docs/design.md#artifact).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightdeploy.errors import ParityError, UsageError
from lightdeploy.exporters import exporter_for_backend, get_exporter, resolve_target
from lightdeploy.exporters.base import PRECISIONS, ExportOptions, ExportResult
from lightdeploy.jobs import make_job, manifest_for, registry_source
from lightdeploy.logs import count_of
from lightdeploy.usermodel import UserModel

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
    """MODEL-TARGET-PRECISION; named weights' MODEL:TAG becomes MODEL-TAG (no ':' in folder names)."""
    return f"{model.replace(':', '-')}-{target}-{precision}"


def check_request(targets: list[str], precision: str) -> None:
    """Every target exists and offers ``precision``: checked for all targets before any is exported."""
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    for target in targets:
        exporter = get_exporter(target)
        if precision not in exporter.precisions:
            raise UsageError(
                f"Target {target!r} exports {', '.join(exporter.precisions)} only; {precision} is not offered. "
                "Choose another target for that precision."
            )


def export(
    model: str | UserModel,
    target: str,
    *,
    precision: str = "fp32",
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    weights: str | Path | None = None,
    weights_key: str | None = None,
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
    """Export one model to one target and gate it; raise ParityError (artifact kept) on a mismatch.

    ``model``: a registered name (built by ``create_model`` with ``weights`` / ``num_classes``), or your
    own model checked by ``usermodel`` (``export_module``, ``lightdeploy export pkg.module:factory``),
    which comes with its weights and class count.
    """
    from lightdeploy.artifact import check_writable, commit_verdict, staging_folder, write_export_log, write_manifest
    from lightdeploy.factory import DEFAULT_SEED, create_model
    from lightdeploy.models.registry import get_spec

    user = model if isinstance(model, UserModel) else None
    spec = user.spec if user else get_spec(model)
    target = resolve_target(target)  # `ov` -> openvino: the folder and the manifest use the canonical name
    check_request([target], precision)
    exporter = get_exporter(target)
    if user and (weights is not None or num_classes is not None):
        raise UsageError("weights and num_classes of your own model are given when it is built (usermodel).")
    if user and input_size is not None and tuple(input_size) != spec.input_size:
        raise UsageError(f"{spec.name} was checked at {spec.input_size}; build it again for another input size.")
    if batch < 1:
        raise UsageError(f"--batch must be at least 1; got {batch}.")
    if dynamic_batch and spec.task == "detect":
        # The detectors loop over the batch in Python (per-image NMS), so the traced graph has the
        # batch it was exported with; the symbolic-dims check would only say "fixed" without why.
        raise UsageError(
            f"{spec.name} exports with a static batch (its per-image NMS is unrolled over "
            "the batch); use --batch N instead of --dynamic-batch."
        )
    size = spec.check_input_size(input_size or spec.input_size)
    out = Path(out)
    final = out / artifact_name(spec.name, target, precision)
    check_writable(out)
    images = None
    if images_dir:
        from lightdeploy.samples import images_from_dir

        images = images_from_dir(images_dir)

    progress(f"building {spec.name}")
    clock = {"start": time.perf_counter()}
    if user:
        eager, source = user.deployable(), user.source
    else:
        eager = create_model(model, num_classes=num_classes, weights=weights, weights_key=weights_key, input_size=size)
        source = registry_source(
            spec, num_classes=num_classes, input_size=size, weights=weights, weights_key=weights_key, seed=DEFAULT_SEED
        )
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
    job = make_job(spec, eager, options, count_of(progress))

    with staging_folder(final) as tmp:
        progress(f"exporting to {target} ({precision})")
        result = exporter.export(job, tmp)
        clock["export"] = time.perf_counter()
        result.info["notes"] = result.info.get("notes", []) + calibration_warnings(result.info)
        manifest = write_manifest(tmp, manifest_for(job, result, source=source, num_classes=num_classes))
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


def export_module(
    module,
    *,
    task: str,
    input_size: tuple[int, int],
    name: str | None = None,
    class_names=None,
    preprocess: dict | None = None,
    outputs=None,
    targets=("onnx",),
    precision: str = "fp32",
    calib: str | Path | None = None,
    out: str | Path = DEFAULT_OUT,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    weights_key: str | None = None,
    size_multiple: int = 1,
    **options,
) -> list[ExportOutcome]:
    """Export your own model to each of ``targets``: the same pipeline and gate as ``lightdeploy export``.

    ``module``: an ``nn.Module``, exported as it is (an eval-mode copy; the module, the global RNGs and
    every ``training`` flag are left as they were), or a factory that returns one: a function, or its
    reference ``"pkg.module:fn"`` / ``"path/to/file.py:fn"``, which the manifest records so that
    ``lightdeploy parity DIR`` can build the model again.  ``num_classes`` and ``weights`` (with
    ``weights_key``) apply to factories, as on the command line.

    ``task``: classify, detect or segment; the model's outputs must meet its contract
    (``lightdeploy.usermodel``).  ``name``: the artifact's name (default: the factory's).
    ``class_names``: one per class.  ``preprocess``: ``{"mean": (r, g, b), "std": (r, g, b)}`` on
    [0, 1] RGB values (default ImageNet's; channel order RGB).  ``outputs``: the output names, when the
    model returns more than its task's.  ``size_multiple``: H and W must be multiples of it.
    ``options``: the rest of ``export``'s (batch, dynamic_size, opset, nhwc, parity, images_dir, ...).

    Every target is exported; if any artifact fails its gate, ParityError names them all afterwards
    (the artifacts are kept for inspection).
    """
    from torch import nn

    from lightdeploy.usermodel import from_factory, from_module

    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise UsageError("targets is empty: give at least one, e.g. targets=('onnx',).")
    check_request(targets, precision)
    describe = {"class_names": class_names, "preprocess": preprocess, "outputs": outputs}
    describe["size_multiple"] = size_multiple
    outcomes, failures = [], []
    with _untouched_global_state():
        if isinstance(module, nn.Module):
            if weights is not None or num_classes is not None:
                raise UsageError(
                    "num_classes and weights are for factories; load your weights into the module before export."
                )
            if name is None:
                raise UsageError("export_module(module, ...) needs name=: the artifacts are named after it.")
            user = from_module(module, task=task, input_size=input_size, name=name, **describe)
        else:
            user = from_factory(
                module,
                task=task,
                input_size=input_size,
                name=name,
                num_classes=num_classes,
                weights=weights,
                weights_key=weights_key,
                **describe,
            )
        for target in targets:
            try:
                calib_dir = str(calib) if calib else None
                outcomes.append(export(user, target, precision=precision, calib_dir=calib_dir, out=out, **options))
            except ParityError as exc:
                failures.append(str(exc))
    if failures:
        raise ParityError("\n".join(failures))
    return outcomes


@contextlib.contextmanager
def _untouched_global_state():
    """Restore the global RNGs (torch, numpy's, Python's) afterwards: exporters, converters and
    calibrators may draw from them, and exporting must not change what the caller's code draws next."""
    import random

    import numpy as np
    import torch

    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def calibration_warnings(info: dict) -> list[str]:
    """The calibration set's warnings (e.g. too few --calib images), wherever the exporter recorded it."""
    found = []
    for value in [info, *info.values()]:
        calib = value.get("calibration") if isinstance(value, dict) else None
        if isinstance(calib, dict) and calib.get("warning"):
            found.append(calib["warning"])
    return found


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

    count = count_of(progress)
    report = run_parity(folder, model=model, images=images, estimator=exporter.estimator, count=count)
    if result.float_twin is not None:
        progress("gating the float graph before reduced precision (fp32 row)")
        report.add_float_graph(_gate_float_twin(result, manifest, model, images, exporter.estimator, count))
    return report


def _gate_float_twin(result: ExportResult, manifest: dict, model, images, estimator, count=None):
    """Write the exporter's float twin (``ExportResult.float_twin``) into a scratch folder outside the
    artifact, give it an fp32 manifest, and run the gate on it."""
    from lightdeploy.artifact import write_manifest
    from lightdeploy.parity import run_parity

    with tempfile.TemporaryDirectory(prefix="lightdeploy-float-twin-") as scratch:
        folder = Path(scratch)
        backend_file = result.float_twin(folder)
        keep = {k: v for k, v in manifest.items() if k not in ("files", "parity")}
        write_manifest(folder, {**keep, "precision": "fp32", "backend_file": backend_file})
        return run_parity(folder, model=model, images=images, estimator=estimator, count=count)


def parity(
    folder: str | Path,
    *,
    images=None,
    threads: int | None = None,
    model=None,
    weights=None,
    progress: Callable[[str], None] = lambda msg: None,
):
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
        model = _eager_from(folder, manifest, weights)
    return run_parity(
        folder, model=model, images=images, threads=threads, estimator=exporter.estimator, count=count_of(progress)
    )


def localize(folder: str | Path, *, images=None, threads: int | None = None, model=None, weights=None):
    """The first module of an artifact whose output leaves its tolerance row
    (``lightdeploy.localize``); eager and ``weights`` as for ``parity``."""
    from lightdeploy.localize import localize as run_localize

    if model is None:
        model = eager_model(folder, weights)
    return run_localize(folder, model=model, images=images, threads=threads)


def eager_model(folder: str | Path, weights=None):
    """The eager model an artifact was exported from, rebuilt from its manifest with the recorded
    weights file found (``weights``, else beside the artifact or in the current folder)."""
    from lightdeploy.runtimes.manifest import read_manifest

    folder = Path(folder)
    return _eager_from(folder, read_manifest(folder, verify=True), weights)


def _eager_from(folder: Path, manifest: dict, weights=None):
    """``eager_model`` for a manifest already read (and its files hashed) by the caller."""
    from lightdeploy.factory import eager_from_manifest
    from lightdeploy.weights import recorded_weights

    found = recorded_weights(manifest["source"].get("weights"), weights, search=[folder.parent, Path.cwd()])
    return eager_from_manifest(manifest, weights=found)
