"""ONNX export + ONNX Runtime parity for every registered model, and the exporter's own promises."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import family_marks, registered, small_size

from lightdeploy.errors import UsageError
from lightdeploy.models.registry import get_spec
from lightdeploy.pipeline import export


@pytest.mark.parametrize("name", registered())
def test_export_and_parity(name, tmp_path):
    spec = get_spec(name)
    outcome = export(name, "onnx", input_size=small_size(spec), out=tmp_path)
    report = outcome.report
    assert report.passed, report.summary()
    assert len(report.inputs) >= 10 and any(not n.startswith("random") for n in report.inputs)
    model = onnx.load(str(outcome.folder / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["lightdeploy_model"] == name
    assert json.loads(props["lightdeploy_preprocessing"])["size"] == list(small_size(spec))


def test_dynamic_batch_is_symbolic_and_runs_batches(tmp_path):
    outcome = export("mobilenetv2_x0.35", "onnx", input_size=(64, 64), dynamic_batch=True, out=tmp_path)
    dims = onnx.load(str(outcome.folder / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[1].dim_param
    assert outcome.manifest["inputs"][0]["shape"][0] == dims[0].dim_param
    assert outcome.report.passed  # the gate fed pairs of inputs as batches of 2


def test_fixed_batch(tmp_path):
    outcome = export("snet49", "onnx", input_size=(64, 64), batch=2, out=tmp_path)
    assert outcome.manifest["inputs"][0]["shape"] == [2, 3, 64, 64] and outcome.report.passed


def test_unsupported_opset_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--opset 11"):
        export("snet49", "onnx", input_size=(64, 64), opset=11, out=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_channel_shuffle_exports_as_gather(tmp_path):
    outcome = export("shufflenetv2_x0.5", "onnx", input_size=(64, 64), out=tmp_path, parity=False)
    ops = outcome.manifest["backend_info"]["onnx"]["op_types"]
    assert "Gather" in ops and "Transpose" not in ops


@pytest.mark.parametrize("name", [pytest.param(n, marks=family_marks(n)) for n in registered("segment")])
def test_segmenter_dynamic_size(name, tmp_path):
    """H and W symbolic in the graph, and the gate runs the photographs again at a second size."""
    spec = get_spec(name)
    h, w = small_size(spec)
    outcome = export(name, "onnx", input_size=(h, 2 * w), dynamic_size=True, out=tmp_path)
    shape = outcome.manifest["inputs"][0]["shape"]
    assert isinstance(shape[2], str) and isinstance(shape[3], str)
    report = outcome.report
    assert report.passed, report.summary()
    assert any("@" in n for n in report.inputs)  # photographs at the second size were compared
    assert report.task_info["mask_pixel_agreement"] >= 0.999
