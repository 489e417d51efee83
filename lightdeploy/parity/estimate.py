"""The estimator hook: how the gate judges an artifact that cannot run where the gate runs.

A TensorRT build plan has no engine on a machine without an NVIDIA GPU.  Its exporter declares an
estimator (``Exporter.estimator``); the pipeline hands it to ``run_parity``, which then runs the
estimate in place of the artifact, through exactly the same steps as any artifact (the same inputs,
the float64 reference and its float32 noise floor, the backend's tolerance row) and marks the report
``estimated`` with the estimator's method.  An estimator returns None for an artifact that can run
itself (e.g. a plan whose engine has been built), and the gate then runs the artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from lightdeploy.runtimes.base import Runtime


class Estimator(Protocol):
    def __call__(self, folder: Path, manifest: dict, threads: int | None = None) -> tuple[Runtime, str] | None:
        """(a runtime that stands in for the artifact, a sentence saying how it estimates), or None."""
        ...
