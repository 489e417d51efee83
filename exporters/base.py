"""What every exporter receives and returns.

An exporter turns one eager model into the backend's file(s) inside a work folder; the pipeline
(``lightdeploy.pipeline``) owns the job, the manifest, the parity gate and the atomic rename.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from lightdeploy.logs import Count

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "image"


@dataclass(frozen=True)
class ExportOptions:
    target: str
    precision: str = "fp32"
    input_size: tuple[int, int] = (224, 224)
    batch: int = 1
    dynamic_batch: bool = False
    dynamic_size: bool = False
    opset: int = 18
    calib_dir: str | None = None
    nhwc: bool = False
    # Backend-specific settings (e.g. detectors' raw-head outputs) as plain JSON-able values.
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["input_size"] = list(self.input_size)
        return d


@dataclass
class ExportJob:
    """The eager model and everything known about it, handed to an exporter."""

    model: torch.nn.Module
    spec: object  # lightdeploy.models.registry.ModelSpec
    options: ExportOptions
    output_names: tuple[str, ...]
    input_name: str = INPUT_NAME
    count: Count | None = None  # progress of long loops (calibration), shown by the CLI

    def example_input(self) -> torch.Tensor:
        h, w = self.options.input_size
        return torch.zeros(self.options.batch, 3, h, w)

    def preprocessing(self) -> dict:
        return {
            "size": list(self.options.input_size),
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "scale": 1 / 255,
            "channel_order": "RGB",
            "layout": "NHWC" if self.options.nhwc else "NCHW",
        }


@dataclass
class ExportResult:
    """What the exporter wrote: the file the backend opens, its I/O, and facts for the manifest."""

    backend: str
    backend_file: str
    inputs: list[dict]
    outputs: list[dict]
    info: dict = field(default_factory=dict)  # facts for the manifest; info["notes"] are shown to the user
    # Timings and cache hits: they differ between two exports of the same model, so they go to the
    # unhashed export_log.json, never into the manifest (docs/design.md#artifact).
    log: dict = field(default_factory=dict)
    # For an fp16 / int8 artifact: writes the same graph before the precision was reduced (same
    # converter, same rewrites) into the folder it is given and returns the file the backend opens.
    # The pipeline gates that float graph at the fp32 row as well: the reduced-precision row alone
    # cannot tell some graph bugs from rounding (docs/design.md#parity).  Never part of the artifact.
    float_twin: Callable[[Path], str] | None = None


class Exporter(Protocol):
    target: str
    backend: str
    precisions: tuple[str, ...]
    # The parity estimator (lightdeploy.parity.estimate.Estimator) for artifacts that cannot run where
    # the gate runs, e.g. a TensorRT plan without a GPU; None when the artifact always runs.
    estimator: Callable | None

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        """Write the backend's files into ``workdir`` (a staging folder); raise UsageError on bad input."""
        ...
