"""The export pipeline: eager model -> exporter -> manifest -> parity gate -> artifact in place.

``export`` is what ``lightdeploy export`` runs and what the Python API offers.  Validation happens
before any work; the artifact is built in a temporary folder and renamed into place (design.md).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from lightdeploy.errors import ParityError, UsageError
from lightdeploy.exporters import get_exporter
from lightdeploy.exporters.base import PRECISIONS, ExportJob, ExportOptions

DEFAULT_OUT = Path("artifacts")


@dataclass
class ExportOutcome:
    folder: Path
    manifest: dict
    report: object | None  # ParityReport, or None with --no-parity


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
        raise UsageError(f"{model_name} exports with a static batch (its per-image NMS is unrolled over "
                         "the batch); use --batch N instead of --dynamic-batch.")
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
    options = ExportOptions(target=target, precision=precision, input_size=size, batch=batch,
                            dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, opset=opset,
                            calib_dir=calib_dir, nhwc=nhwc, extra=dict(extra or {}))
    deployable = spec.export_wrapper(model, options.extra) if spec.export_wrapper else model
    job = ExportJob(model=deployable, spec=spec, options=options, output_names=_output_names(spec, options))

    with staging_folder(final) as tmp:
        progress(f"exporting to {target} ({precision})")
        result = exporter.export(job, tmp)
        manifest = write_manifest(tmp, _manifest(job, result, model, num_classes, weights, DEFAULT_SEED))
        report = None
        if parity:
            from lightdeploy.parity import run_parity

            progress("running the parity gate")
            # A TensorRT build plan has no engine on this machine: its exporter gates on CPU estimates
            # (and returns None when the artifact is runnable here, e.g. an engine built on a GPU).
            estimate = getattr(exporter, "estimate_parity", None)
            report = estimate(tmp, model=deployable, images=images) if estimate else None
            if report is None:
                report = run_parity(tmp, model=deployable, images=images)
            if result.float_twin is not None:
                progress("gating the float graph before reduced precision (fp32 row)")
                report.add_float_graph(gate_float_twin(result, manifest, deployable, images))
            report.artifact = final.name
            manifest = write_manifest(tmp, {**manifest, "parity": report.as_dict()})
        commit(tmp, final)
    if report is not None and not report.passed:
        raise ParityError(report.summary() + f". The artifact is kept at {final} for inspection.")
    return ExportOutcome(final, manifest, report)


def gate_float_twin(result, manifest: dict, model, images):
    """Write the exporter's float twin (see ``ExportResult.float_twin``) into a scratch folder outside
    the artifact, give it an fp32 manifest, and run the gate on it."""
    import tempfile

    from lightdeploy.artifact import write_manifest
    from lightdeploy.parity import run_parity

    with tempfile.TemporaryDirectory(prefix="lightdeploy-float-twin-") as scratch:
        folder = Path(scratch)
        result.float_twin(folder)
        keep = {k: v for k, v in manifest.items() if k not in ("files", "parity")}
        write_manifest(folder, {**keep, "precision": "fp32"})
        return run_parity(folder, model=model, images=images)


def _output_names(spec, options: ExportOptions) -> tuple[str, ...]:
    names = tuple(spec.outputs)
    if options.extra.get("raw_heads"):
        if not spec.raw_outputs:
            raise UsageError(f"--raw-heads is for detectors; {spec.name} has no raw head outputs.")
        names += tuple(spec.raw_outputs)
    return names


def _manifest(job: ExportJob, result, model, num_classes, weights, seed) -> dict:
    from lightdeploy import __version__
    from lightdeploy.runtimes.manifest import sha256

    spec, options = job.spec, job.options
    weights_entry = None
    if weights is not None:
        weights_entry = {"path": str(Path(weights).resolve()), "sha256": sha256(Path(weights))}
    pre = job.preprocessing()
    pre["size_multiple"] = spec.stride
    return {
        "lightdeploy_version": __version__,
        "model": spec.name,
        "family": spec.family,
        "task": spec.task,
        "description": spec.description,
        "num_classes": num_classes or spec.num_classes,
        "class_names": _class_names(spec, num_classes or spec.num_classes),
        "target": options.target,
        "backend": result.backend,
        "precision": options.precision,
        "backend_file": result.backend_file,
        "inputs": result.inputs,
        "outputs": result.outputs,
        "preprocessing": pre,
        "source": {
            "model": spec.name,
            "num_classes": num_classes or spec.num_classes,
            "input_size": list(options.input_size),
            "weights": weights_entry,
            "seed": seed if weights is None else None,
            "bn_statistics": "user weights" if weights else "re-estimated on the sample photographs",
        },
        "export_options": options.as_dict(),
        "versions": _versions(),
        "backend_info": result.info,
        "notes": list(result.info.get("notes", [])),  # printed by `lightdeploy export` under the result
    }


def _class_names(spec, num_classes: int) -> list[str] | None:
    """The dataset's names when the head still has the dataset's class count."""
    names = spec.class_names
    return list(names) if names and len(names) == num_classes else None


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxscript", "onnxsim", "onnxruntime", "openvino", "nncf",
                "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "tensorrt"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def eager_from_manifest(manifest: dict):
    """Rebuild the eager model an artifact was exported from (for ``lightdeploy parity DIR``)."""
    from lightdeploy.factory import create_model
    from lightdeploy.models.registry import get_spec
    from lightdeploy.runtimes.manifest import sha256

    src = manifest["source"]
    weights = src.get("weights")
    path = None
    if weights:
        path = Path(weights["path"])
        if not path.is_file():
            raise UsageError(
                f"The artifact was exported from weights {str(path)!r}, which no longer exist; parity needs "
                "them to rebuild the eager model. Put the file back or re-export."
            )
        if sha256(path) != weights["sha256"]:
            raise UsageError(f"Weights {str(path)!r} changed since export (sha256 differs); re-export the artifact.")
    model = create_model(src["model"], num_classes=src["num_classes"], weights=path,
                         input_size=tuple(src["input_size"]), seed=src.get("seed") or 0)
    spec = get_spec(src["model"])
    extra = manifest.get("export_options", {}).get("extra", {})
    return spec.export_wrapper(model, extra) if spec.export_wrapper else model
