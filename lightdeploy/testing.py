"""Parity in your own test suite: does the artifact still match the model?

``assert_parity(model_or_factory, artifact_dir, images=None)`` runs the parity gate that
``lightdeploy export`` and ``lightdeploy parity DIR`` run, against the eager model you give, and raises
``AssertionError`` carrying the gate's table when the artifact diverges.  With pytest, the fixture
``lightdeploy_parity`` (``lightdeploy.pytest_plugin``, loaded automatically) does the same and puts
the table in the failure report::

    def test_artifact_matches_model(lightdeploy_parity):
        lightdeploy_parity(build_model(), "artifacts/mynet-onnx-fp32")
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

TABLE_WIDTH = 120  # characters: the table renders the same in every terminal and CI log


def check_parity(model_or_factory, artifact_dir, images=None):
    """The gate's ``ParityReport`` for ``artifact_dir`` against ``model_or_factory``.

    ``model_or_factory``: the ``nn.Module`` as deployed (it is not changed: the gate runs a copy), or
    a factory that returns it (a function, or a reference ``"pkg.module:fn"`` / ``"file.py:fn"``;
    called as the export called it).  ``images``: a folder of images or {name: HxWx3 uint8 array}, in
    place of the bundled photographs.
    """
    from lightdeploy.pipeline import parity
    from lightdeploy.runtimes.manifest import read_manifest

    manifest = read_manifest(artifact_dir, verify=True)
    model = eager_model(model_or_factory, manifest)
    if isinstance(images, (str, Path)):
        from lightdeploy.samples import images_from_dir

        images = images_from_dir(images)
    return parity(artifact_dir, images=images, model=model)


def assert_parity(model_or_factory, artifact_dir, images=None):
    """``check_parity``, raising ``AssertionError`` with the gate's summary and table if it failed."""
    __tracebackhide__ = True  # pytest shows the caller's line
    report = check_parity(model_or_factory, artifact_dir, images)
    if not report.passed:
        raise AssertionError(f"{report.summary()}\n{table_text(report)}")
    return report


def table_text(report) -> str:
    """The gate's table as plain text."""
    from rich.console import Console

    from lightdeploy.parity.report import render_table

    console = Console(file=io.StringIO(), width=TABLE_WIDTH, record=True, color_system=None)
    console.print(render_table(report))
    return console.export_text()


def eager_model(model_or_factory, manifest: dict):
    """The eager model to compare: an eval-mode copy of the module given (or built by the factory,
    with the arguments the export recorded), wrapped as the export wrapped it."""
    from torch import nn

    from lightdeploy import references
    from lightdeploy.factory import as_exported

    if isinstance(model_or_factory, nn.Module):
        module = model_or_factory
    else:
        if isinstance(model_or_factory, str):
            ref, factory = model_or_factory, references.resolve(model_or_factory)
        elif callable(model_or_factory):
            factory = model_or_factory
            ref = references.reference_of(factory) or getattr(factory, "__qualname__", repr(factory))
        else:
            raise TypeError(f"assert_parity takes an nn.Module or a factory; got {type(model_or_factory).__name__}")
        kwargs = manifest["source"].get("factory_kwargs", {})
        kwargs = {k: tuple(v) if k == "input_size" else v for k, v in kwargs.items()}
        module = references.call(factory, ref, kwargs)
    return as_exported(copy.deepcopy(module).eval(), manifest)
