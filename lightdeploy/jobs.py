"""From a registered model to an export job, and from an export result to the artifact's manifest.

One place builds the ``ExportJob`` (the export wrapper, the output names) for every caller: the
export pipeline, ``lightdeploy check`` and the benchmarks.
"""

from __future__ import annotations

import platform
from pathlib import Path

from torch import nn

from lightdeploy.errors import UsageError
from lightdeploy.exporters.base import ExportJob, ExportOptions, ExportResult
from lightdeploy.models.registry import ModelSpec
from lightdeploy.versions import __version__, installed_versions


def output_names(spec: ModelSpec, options: ExportOptions) -> tuple[str, ...]:
    """The exported graph's outputs: the spec's, plus the raw head tensors with ``--raw-heads``."""
    names = tuple(spec.outputs)
    if options.extra.get("raw_heads"):
        if not spec.raw_outputs:
            raise UsageError(f"--raw-heads is for detectors; {spec.name} has no raw head outputs.")
        names += tuple(spec.raw_outputs)
    return names


def make_job(spec: ModelSpec, model: nn.Module, options: ExportOptions) -> ExportJob:
    """The job an exporter receives: the module that is exported (the spec's export wrapper around
    ``model`` when it has one) and its output names."""
    deployable = spec.export_wrapper(model, options.extra) if spec.export_wrapper else model
    return ExportJob(model=deployable, spec=spec, options=options, output_names=output_names(spec, options))


def manifest_for(
    job: ExportJob, result: ExportResult, *, num_classes: int | None, weights: str | Path | None, seed: int
) -> dict:
    """The manifest of an artifact (docs/design.md#artifact), before file hashes and parity are added."""
    from lightdeploy.runtimes.manifest import sha256

    spec, options = job.spec, job.options
    weights_entry = None
    if weights is not None:
        # By name and hash, never by path: the manifest carries nothing of the exporting machine, and
        # `lightdeploy parity DIR --weights FILE` finds the file wherever it is now.
        weights_entry = {"file": Path(weights).name, "sha256": sha256(Path(weights))}
    classes = num_classes or spec.num_classes
    pre = job.preprocessing()
    pre["size_multiple"] = spec.stride
    return {
        "lightdeploy_version": __version__,
        "model": spec.name,
        "family": spec.family,
        "task": spec.task,
        "description": spec.description,
        "num_classes": classes,
        "class_names": class_names(spec, classes),
        "target": options.target,
        "backend": result.backend,
        "precision": options.precision,
        "backend_file": result.backend_file,
        "inputs": result.inputs,
        "outputs": result.outputs,
        "preprocessing": pre,
        "source": {
            "model": spec.name,
            "num_classes": classes,
            "input_size": list(options.input_size),
            "weights": weights_entry,
            "seed": seed if weights is None else None,
            "bn_statistics": "user weights" if weights else "re-estimated on the sample photographs",
        },
        "export_options": options.as_dict(),
        "versions": {"python": platform.python_version(), **installed_versions()},
        "backend_info": result.info,
        "notes": list(result.info.get("notes", [])),  # printed by `lightdeploy export` under the result
    }


def class_names(spec: ModelSpec, num_classes: int) -> list[str] | None:
    """The dataset's names when the head still has the dataset's class count."""
    names = spec.class_names
    return list(names) if names and len(names) == num_classes else None
