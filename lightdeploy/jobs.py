"""From a model to an export job, and from an export result to the artifact's manifest.

One place builds the ``ExportJob`` (the export wrapper, the output names) for every caller: the
export pipeline, ``lightdeploy check`` and the benchmarks; registered models and your own models
(``usermodel.UserModel``, whose spec is not registered) take the same path.
"""

from __future__ import annotations

import platform
from pathlib import Path

from torch import nn

from lightdeploy.errors import UsageError
from lightdeploy.exporters.base import ExportJob, ExportOptions, ExportResult
from lightdeploy.logs import Count
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


def make_job(spec: ModelSpec, model: nn.Module, options: ExportOptions, count: Count | None = None) -> ExportJob:
    """The job an exporter receives: the module that is exported (the spec's export wrapper around
    ``model`` when it has one), its output names, and where long loops report progress."""
    deployable = spec.export_wrapper(model, options.extra) if spec.export_wrapper else model
    names = output_names(spec, options)
    return ExportJob(model=deployable, spec=spec, options=options, output_names=names, count=count)


def registry_source(
    spec: ModelSpec,
    *,
    num_classes: int | None,
    input_size: tuple[int, int],
    weights: str | Path | None,
    weights_key: str | None = None,
    seed: int,
) -> dict:
    """The manifest's ``source`` of a registered model: what ``eager_from_manifest`` rebuilds it from.
    (Your own models' source comes from ``usermodel``: their factory, class and state-dict hash.)"""
    from lightdeploy.weights import weights_entry

    named = spec.pretrained if weights is None else None
    if named is not None:  # MODEL:TAG: create_model finds (and checks) the file by its name
        entry = {"named": named.name, "file": named.file, "sha256": named.sha256}
    else:
        entry = weights_entry(weights, weights_key) if weights is not None else None
    return {
        "kind": "registry",
        "model": spec.name,
        "num_classes": num_classes or spec.num_classes,
        "input_size": list(input_size),
        "weights": entry,
        "seed": seed if entry is None else None,
        "bn_statistics": "re-estimated on the sample photographs" if entry is None else "the weights' own",
    }


def manifest_for(job: ExportJob, result: ExportResult, *, source: dict, num_classes: int | None = None) -> dict:
    """The manifest of an artifact (docs/design.md#artifact), before file hashes and parity are added.

    ``source``: where the eager model came from (``registry_source``, or ``UserModel.source``)."""
    spec, options = job.spec, job.options
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
        "source": source,
        "export_options": options.as_dict(),
        "versions": {"python": platform.python_version(), **installed_versions()},
        "backend_info": result.info,
        "notes": list(result.info.get("notes", [])),  # printed by `lightdeploy export` under the result
    }


def class_names(spec: ModelSpec, num_classes: int) -> list[str] | None:
    """The dataset's names when the head still has the dataset's class count."""
    names = spec.class_names
    return list(names) if names and len(names) == num_classes else None
