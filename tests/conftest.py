"""Shared fixtures.  Tests are parametrised over the registry, so a new model is enrolled everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two xdist workers on two cores

pytest_plugins = ("pytester",)  # tests/test_testing_plugin.py runs small pytest suites
ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """``--dist loadgroup`` keeps an ``xdist_group`` on one worker by renaming its tests' ``_nodeid``;
    the module caches that share one export per group depend on it.  pytest 9.2 reads ids from ``_id``
    instead, so with pytest-xdist <= 3.8 every group is silently split and exported twice: refuse."""
    if config.getoption("dist", "no") != "loadgroup":
        return
    import xdist  # only asked for with --dist: a run without pytest-xdist stays possible

    pytest_version = tuple(int(v) for v in pytest.__version__.split(".")[:2])
    xdist_version = tuple(int(v) for v in xdist.__version__.split(".")[:2])
    if pytest_version >= (9, 2) and xdist_version <= (3, 8):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__} ignores --dist loadgroup "
            "(each worker would re-export what a group shares). Install the dev extra's pins: "
            "pip install -e '.[cpu,dev]'."
        )


def registered(task: str | None = None) -> list[str]:
    """Registered names without aliases (an alias builds the same model as its target)."""
    from lightdeploy.models.registry import get_spec, list_models

    return [n for n in list_models(task) if get_spec(n).alias_of is None]


def family_marks(name: str) -> list:
    """``slow`` unless ``name`` is the first registered model of its family.

    ONNX export, the reference every backend starts from, runs every registered model in the fast set.
    The costlier backends and options (OpenVINO, TFLite conversions, TensorRT estimates, dynamic sizes)
    run one model per family there: a family's other widths and depths share its ops.  The slow set
    (``make test-all``) runs them all, and docs/matrix.md holds every model on every CPU backend at fp32."""
    from lightdeploy.models.registry import get_spec

    family = get_spec(name).family
    first = next(n for n in registered() if get_spec(n).family == family)
    return [] if name == first else [pytest.mark.slow]


def small_size(spec) -> tuple[int, int]:
    """A small input that every feature map of the model can still be built from."""
    side = max(64, 2 * spec.stride)
    return side, side


def quant_size(spec) -> tuple[int, int]:
    """The input size an int8 artifact is judged at: the model's own, except the segmenters (``small_size``).

    At 64x64 a classifier's last feature map is 2x2, so global pooling averages 4 positions instead of
    49 and int8 rounding weighs about sqrt(49 / 4) = 3.5x more in the logits than where the model is
    deployed (measured, OpenVINO int8 cosine at 64 / 224: mobilenetv2 0.9887 / 0.9989, snet49
    0.9795 / 0.9987).  Detectors go the other way: a 4x4 feature map has 400 anchors instead of 10^4,
    so int8 noise re-ranks fewer near-tied proposals and 64x64 would pass what 320x320 fails (eager
    with int8 noise, thundernet_snet49: box match F1 0.863 at 64, 0.677 at 320; test_conditioning).
    The segmenters' own sizes (512x1024, 1024x1024) would cost minutes per test.
    """
    return small_size(spec) if spec.task == "segment" else tuple(spec.input_size)


@pytest.fixture(scope="session")
def cat_image() -> np.ndarray:
    import skimage.data

    return skimage.data.chelsea()


@pytest.fixture(scope="session")
def classifier_artifact(tmp_path_factory) -> Path:
    """A small ONNX artifact exported once per session (shufflenetv2_x0.5 at 64x64)."""
    from lightdeploy.pipeline import export

    out = tmp_path_factory.mktemp("artifacts")
    return export("shufflenetv2_x0.5", "onnx", input_size=(64, 64), out=out).folder


_CPU_ARTIFACTS: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def cpu_artifact(tmp_path_factory):
    """``cpu_artifact(model, target)``: the artifact of ``model`` (at ``small_size``) for a CPU target,
    exported once per session with its gate (tests that share it run in one xdist group)."""
    from lightdeploy.models.registry import get_spec
    from lightdeploy.pipeline import export

    def get(model: str, target: str) -> Path:
        key = (model, target)
        if key not in _CPU_ARTIFACTS:
            out = tmp_path_factory.mktemp(f"{model}-{target}")
            _CPU_ARTIFACTS[key] = export(model, target, input_size=small_size(get_spec(model)), out=out).folder
        return _CPU_ARTIFACTS[key]

    return get


def run_cli(*args: str, cwd: Path | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess (``prelude``: Python run first, e.g. to hide a package)."""
    code = (
        f"{prelude}\nimport sys\nfrom lightdeploy.cli import main\nsys.argv = ['lightdeploy', *{list(args)!r}]\nmain()"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600)
