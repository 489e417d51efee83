"""OpenVINO export + parity for every registered model at FP32, FP16 and INT8, and the backend's promises.

Random weights are shifted into the ordered regime before their BN statistics are re-estimated
(``lightdeploy.factory.RANDOM_BN_SHIFT``); without that, rounding noise grows through depth and an
honest fp16 or int8 artifact of the same model misses its row (the measurements are there).  INT8 is
judged at ``quant_size`` (the model's own input size; the segmenters' small_size).
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from conftest import family_marks, quant_size, registered, small_size

from lightdeploy.errors import MissingDependencyError, ParityError
from lightdeploy.models.registry import get_spec
from lightdeploy.pipeline import export

pytest.importorskip("openvino")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Eager runs on one thread: two xdist workers share two cores with OpenVINO's own threads, and
    OpenMP threads that wait on a busy core made a 64x64 forward 50x slower (measured: 622 vs 13 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check(outcome, name, precision):
    report = outcome.report
    assert report.passed, report.summary()
    float_rows = [c for c in report.checks if c.subject.startswith("float graph: ")]
    assert bool(float_rows) == (precision != "fp32")  # fp16 / int8: the graph before, at the fp32 row
    manifest = outcome.manifest
    assert manifest["backend"] == "openvino" and manifest["backend_file"] == "model.xml"
    assert manifest["precision"] == precision
    assert {"model.onnx", "model.xml", "model.bin"} <= set(manifest["files"])
    assert [o["name"] for o in manifest["outputs"]] == list(get_spec(name).outputs)


def _precision_params():
    return [
        pytest.param(name, precision, id=f"{name}-{precision}", marks=family_marks(name))
        for name in registered()
        for precision in ("fp32", "fp16")
    ]


@pytest.mark.parametrize("name,precision", _precision_params())
def test_export_and_parity(name, precision, tmp_path):
    outcome = export(name, "openvino", precision=precision, input_size=small_size(get_spec(name)), out=tmp_path)
    _check(outcome, name, precision)


def _int8_params():
    """Every model; NNCF calibration of the segmenters and detectors takes minutes and each classifier
    at 224x224 about 15 s, so one model per family runs in every run and the rest in the slow set
    (`make test-all`)."""
    params = []
    for name in registered():
        marks = [] if name in INT8_EVERY_RUN else [pytest.mark.slow]
        if name in KNOWN_INT8_FAILURES:
            marks.append(pytest.mark.xfail(raises=ParityError, strict=True, reason=KNOWN_INT8_FAILURES[name]))
        params.append(pytest.param(name, marks=marks))
    return params


INT8_EVERY_RUN = ("mobilenetv2", "shufflenetv2")
# Measured at quant_size (the model's own input size, the segmenters' 64x64; the int8 row's box match
# F1 is 0.85).  The detectors fail on int8 rounding alone, in eager PyTorch with no export
# (test_conditioning.test_int8_rounding_alone_fails_a_random_detectors_box_f1: thundernet_snet49 0.677
# at 320x320): a random RPN ranks 10^4 near-tied anchors, so int8 noise changes which proposals NMS
# keeps.  BiSeNet passes since the activation ranges are global min / max (exporters/openvino/quantize.py).
KNOWN_INT8_FAILURES = {
    "thundernet_snet49": "box match F1 0.668 at 320x320",
    "thundernet_snet146": "box match F1 0.694 at 320x320",
    "thundernet_snet535": "box match F1 0.704 at 320x320",
    "lighthead_rcnn": "box match F1 0.729 at 512x512 (1.0 at 64x64)",
}


@pytest.mark.parametrize("name", _int8_params())
def test_export_and_parity_int8(name, tmp_path):
    outcome = export(name, "openvino", precision="int8", input_size=quant_size(get_spec(name)), out=tmp_path)
    _check(outcome, name, "int8")


# ------------------------------------------------------------------------------------ the exporter
@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory):
    """Gated: runtimes.load refuses an artifact whose gate never ran."""
    out = tmp_path_factory.mktemp("ov")
    return export("shufflenetv2_x0.5", "openvino", input_size=(64, 64), out=out).folder


def test_fp16_weights_are_half_the_size(fp32_artifact, tmp_path):
    fp16 = export(
        "shufflenetv2_x0.5", "openvino", precision="fp16", input_size=(64, 64), out=tmp_path, parity=False
    ).folder
    ratio = (fp16 / "model.bin").stat().st_size / (fp32_artifact / "model.bin").stat().st_size
    assert 0.45 < ratio < 0.55


class _Progress:
    """A progress callback with the count channel the CLI's has (``logs.count_of``)."""

    def __init__(self):
        self.counts: list[tuple[int, int, str]] = []

    def __call__(self, msg: str) -> None:
        pass

    def count(self, done: int, total: int, what: str) -> None:
        self.counts.append((done, total, what))


INT8_PROGRESS = _Progress()


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("ov8")
    kw = {"precision": "int8", "input_size": (64, 64), "out": out, "parity": False, "progress": INT8_PROGRESS}
    return export("mobilenetv2_x0.35", "openvino", **kw).folder


def test_int8_manifest_says_what_calibrated_it(int8_artifact):
    from lightdeploy.runtimes.manifest import read_manifest

    info = read_manifest(int8_artifact)["backend_info"]["int8"]
    calib = info["calibration"]
    from lightdeploy.calibration import DEFAULT_SAMPLES

    assert calib["source"].startswith("bundled photographs (") and "chelsea" in calib["source"]
    assert DEFAULT_SAMPLES * 0.9 <= calib["images"] <= DEFAULT_SAMPLES * 1.1 and "seed" in calib["augmentation"]
    assert calib["batches_used"] > 0 and info["fake_quantize_nodes"] > 0
    assert "ignored_scope" in info and "preset" in info
    # NNCF's passes over the calibration set are counted for the progress display, sample by sample
    counted = [c for c in INT8_PROGRESS.counts if c[2] == "calibration samples"]
    assert (
        counted
        and all(c[1] == calib["images"] for c in counted)
        and (calib["batches_used"], calib["images"], "calibration samples") in counted
    )


def test_channel_shuffle_gathers_survive_openvino(fp32_artifact):
    """OpenVINO's ReverseInputChannelsFusion folded the shuffle Gather into the next conv wrongly (see
    guard_permutation_gathers); the exporter's rewrite keeps it out, and FP32 parity holds."""
    from lightdeploy.parity import run_parity

    info = __import__("json").loads((fp32_artifact / "manifest.json").read_text())["backend_info"]
    assert info["onnx"]["rewrites"]["gather_axis_made_negative"] > 0
    assert run_parity(fp32_artifact).passed


def test_channel_shuffles_are_folded_into_the_convolutions(fp32_artifact):
    """Every shuffle Gather of shufflenetv2 (16 units) is folded into the convolutions after it
    (exporters/onnx/permutations.py): the IR moves no channel one by one, neither as a Gather (the
    reference kernel) nor as ShuffleChannels; parity of the same artifact is tested above."""
    info = __import__("json").loads((fp32_artifact / "manifest.json").read_text())["backend_info"]
    xml = (fp32_artifact / "model.xml").read_text()
    assert info["openvino"]["channel_permutations_folded"]["gathers_removed"] == 16
    assert info["openvino"]["shuffle_channels"] == 0
    assert 'type="Gather"' not in xml and 'type="ShuffleChannels"' not in xml


def test_permutation_gather_guard_on_a_tiny_graph(tmp_path):
    """The bug and the guard on one Gather -> Conv: a non-involutive permutation of 8 channels."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    from lightdeploy.exporters.openvino.rewrites import guard_permutation_gathers

    rng = np.random.default_rng(0)
    perm = np.arange(8).reshape(2, 4).T.reshape(-1)  # channel shuffle, groups=2: not its own inverse
    w = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "perm"], ["g"], axis=1), helper.make_node("Conv", ["g", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        initializer=[numpy_helper.from_array(perm, "perm"), numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((1, 8, 4, 4)).astype(np.float32)
    want = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x[:, perm])

    def run(m):
        path = tmp_path / "m.onnx"
        onnx.save(m, str(path))
        compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled({"x": x})[0]

    assert guard_permutation_gathers(model) == 1
    np.testing.assert_allclose(run(model), want, atol=1e-4)


def test_a_shuffle_the_fold_leaves_runs_as_shuffle_channels(tmp_path):
    """A shuffle whose consumer needs the exact order (here the graph's output) stays a Gather in the
    folded graph; the IR runs it as ShuffleChannels, with the same values."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    from lightdeploy.exporters.onnx.permutations import fold_channel_permutations
    from lightdeploy.exporters.openvino.rewrites import shuffle_gathers_to_op
    from lightdeploy.ops._channel_shuffle import shuffle_permutation

    perm = shuffle_permutation(12, 3)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gather", ["r", "perm"], ["y"], axis=-3)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 3, 3])],
        initializer=[numpy_helper.from_array(perm, "perm")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert fold_channel_permutations(model)["gathers_removed"] == 0
    onnx.save(model, str(tmp_path / "m.onnx"))
    converted = ov.convert_model(str(tmp_path / "m.onnx"))
    assert shuffle_gathers_to_op(converted) == 1
    x = np.random.default_rng(1).standard_normal((1, 12, 3, 3)).astype(np.float32)
    got = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": x})[0]
    np.testing.assert_array_equal(got, np.maximum(x, 0)[:, perm])


# ------------------------------------------------------------------------------------ the runtime
def test_runtime_pins_f32_and_latency(fp32_artifact):
    from lightdeploy.runtimes import open_runtime

    rt = open_runtime(fp32_artifact)
    assert rt.inference_precision == "f32"  # not the bf16 default of AMX / AVX-512-BF16 hosts
    assert str(rt.property("PERFORMANCE_HINT")).endswith("LATENCY")
    out = rt.run({"image": np.zeros((1, 3, 64, 64), np.float32)})
    assert out["logits"].shape == (1, 1000) and out["logits"].dtype == np.float32


@pytest.mark.parametrize("threads", [1, 2])
def test_runtime_thread_count(fp32_artifact, threads):
    from lightdeploy.runtimes import open_runtime

    assert open_runtime(fp32_artifact, threads=threads).threads == threads


def test_runtime_rejects_bad_threads_and_feeds(fp32_artifact):
    from lightdeploy.errors import UsageError
    from lightdeploy.runtimes import open_runtime

    with pytest.raises(UsageError, match="threads"):
        open_runtime(fp32_artifact, threads=0)
    rt = open_runtime(fp32_artifact)
    with pytest.raises(UsageError, match="image"):
        rt.run({"input": np.zeros((1, 3, 64, 64), np.float32)})


def test_runtime_feeds_read_only_and_strided_arrays_and_returns_owned_outputs(fp32_artifact):
    """The request's tensors share the caller's arrays: a read-only one (OpenVINO cannot share it) and a
    strided view give the same logits as a plain array, and an output stays as returned after the next
    call reuses the request."""
    from lightdeploy.runtimes import open_runtime

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with open_runtime(fp32_artifact) as rt:
        first = rt.run({"image": x})["logits"]
        kept = first.copy()
        read_only = x.copy()
        read_only.flags.writeable = False
        wide = np.zeros((1, 3, 64, 128), np.float32)
        wide[..., ::2] = x
        for feed in (read_only, wide[..., ::2]):
            assert np.array_equal(rt.run({"image": feed})["logits"], kept)
        rt.run({"image": -x})
        assert np.array_equal(first, kept) and first.flags.owndata


def test_runtime_load_predicts(fp32_artifact, cat_image):
    from lightdeploy import runtimes

    model = runtimes.load(fp32_artifact, threads=1)
    assert model.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})["logits"].shape == (1, 1000)
    assert model.predict(cat_image)


def test_runs_without_torch(fp32_artifact):
    """An edge app has openvino and numpy, not torch: loading and running the IR must not need it."""
    import subprocess

    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "import numpy as np\nfrom lightdeploy import runtimes\n"
        f"m = runtimes.load({str(fp32_artifact)!r})\n"
        "print(m.infer({'image': np.zeros((1, 3, 64, 64), np.float32)})['logits'].shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 1000)"


def test_dynamic_batch(tmp_path):
    outcome = export("mobilenetv2_x0.35", "openvino", input_size=(64, 64), dynamic_batch=True, out=tmp_path)
    assert isinstance(outcome.manifest["inputs"][0]["shape"][0], str) and outcome.report.passed
    from lightdeploy.runtimes import open_runtime

    rt = open_runtime(outcome.folder)
    assert rt.inputs[0].shape == (None, 3, 64, 64)
    assert rt.run({"image": np.zeros((3, 3, 64, 64), np.float32)})["logits"].shape == (3, 1000)


def test_missing_openvino_names_the_extra(fp32_artifact, monkeypatch):
    from lightdeploy.runtimes import open_runtime

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingDependencyError, match=r"lightdeploy\[openvino-runtime\]"):  # runs, no torch
        open_runtime(fp32_artifact)


def test_missing_openvino_at_export_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"lightdeploy\[openvino\]"):
        export("shufflenetv2_x0.5", "openvino", input_size=(64, 64), out=tmp_path)
    assert not any(p.name.startswith("shufflenetv2_x0.5") for p in tmp_path.iterdir())


def test_int8_failure_names_output_and_amount(int8_artifact):
    """An int8 miss reports each failing output with its value and limit (forced here by an override)."""
    from lightdeploy.parity import run_parity, tolerance_for

    tol = tolerance_for("openvino", "int8", overrides={"cosine_min": 1.000001})
    report = run_parity(int8_artifact, tolerance=tol)
    assert not report.passed
    summary = report.summary()
    assert "openvino/int8" in summary
    assert re.search(r"logits cosine = 0\.\d+ \(limit >= 1\)", summary), summary
    assert ParityError(summary).exit_code == 1


# ------------------------------------------------------------------------------------ PSRoIAlign
def _psroi_module():
    """image -> 4x-downsampled 18-channel features -> PSRoIAlign 3x3 of fixed boxes (incl. edge cases)."""
    import torch

    from lightdeploy.ops import ps_roi_align

    class PSRoI(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 18, 3, padding=1)
            boxes = [
                [0, 0, 0, 63, 63],
                [0, 5.3, 7.9, 40.2, 30.1],
                [0, -6, -4, 20, 70],  # whole, inner, outside
                [0, 30.5, 30.5, 31.0, 31.25],
                [0, 48, 2, 64, 17],
            ]  # sub-pixel, right edge
            self.register_buffer("boxes", torch.tensor(boxes))

        def forward(self, image):
            feats = torch.nn.functional.avg_pool2d(self.conv(image), 4)
            return ps_roi_align(feats, self.boxes, 3, spatial_scale=0.25, sampling_ratio=2)

    return PSRoI().eval()


@pytest.mark.parametrize(
    "variant", ["roi_align_all_channels", "roi_align_per_bin", "roi_align_bins_as_batch", "bilinear_gather"]
)
def test_ps_roi_align_through_openvino(variant, tmp_path, monkeypatch):
    """The ONNX lowerings of PSRoIAlign (opset-16 RoiAlign, half_pixel) convert to OpenVINO ROIAlign
    with aligned_mode half_pixel_for_nn (OpenVINO's 'half_pixel' would be 0.09 off) and match eager."""
    import openvino as ov
    import torch

    from lightdeploy.exporters.base import ExportJob, ExportOptions
    from lightdeploy.exporters.onnx.export import export_onnx
    from lightdeploy.ops import _ps_roi_align as psmod

    monkeypatch.setattr(psmod, "ONNX_TRANSLATIONS", {psmod._OP: psmod.ONNX_VARIANTS[variant]})
    module = _psroi_module()
    job = ExportJob(
        model=module, spec=None, options=ExportOptions(target="openvino", input_size=(64, 64)), output_names=("pooled",)
    )
    export_onnx(job, tmp_path / "model.onnx")
    model = ov.convert_model(str(tmp_path / "model.onnx"))
    modes = [op.get_attributes()["aligned_mode"] for op in model.get_ordered_ops() if op.get_type_name() == "ROIAlign"]
    if variant != "bilinear_gather":
        assert modes and set(modes) == {"half_pixel_for_nn"}
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        want = module(x).numpy()
    got = compiled({"image": x.numpy()})[0]
    assert got.shape == want.shape == (5, 2, 3, 3)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max() + 1e-6)


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("values", ["random", "ties", "all_equal"])
def test_stable_topk_rewrite_orders_ties_by_index(mode, values):
    """OpenVINO's own stable TopK costs 50 ms on 10000 -> 2000 (ThunderNet's proposals), so
    ``stable_topk`` rebuilds it from unstable TopKs on integer keys; ties must still go by index,
    including a tie across the k-th place, exactly like ONNX's TopK and numpy's stable argsort."""
    import openvino as ov
    import openvino.opset15 as ops

    from lightdeploy.exporters.openvino.rewrites import stable_topk

    rng = np.random.default_rng(0)
    x = {
        "random": rng.standard_normal((3, 300)),
        "ties": np.round(rng.random((3, 300)), 1),
        "all_equal": np.ones((3, 300)),
    }[values].astype(np.float32)
    k = 40
    param = ops.parameter([3, 300], np.float32, name="x")
    topk = ops.topk(param, ops.constant(np.int64(k)), -1, mode, "value", "i64", False)
    model = ov.Model([topk.output(0), topk.output(1)], [param])
    assert stable_topk(model) == 1
    assert "stable_indices" in " ".join(op.get_friendly_name() for op in model.get_ordered_ops())
    got_values, got_index = ov.Core().compile_model(model, "CPU")(x).values()
    order = np.argsort(-x if mode == "max" else x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(got_index, order)
    np.testing.assert_array_equal(got_values, np.take_along_axis(x, order, -1))
