"""lightdeploy::ps_roi_align: eager vs a slow loop port of torchvision's CPU kernel; every ONNX
lowering in onnxruntime vs eager; the decomposition vs eager.

ONNX tolerance (the fp32 parity rule of docs/design.md#tolerance-table): max abs err <= 1e-4 * max|ref| + 1e-5.
Eager vs the float64 loop reference: the same rule (float32 vs float64 rounding only).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import lightdeploy.ops
from lightdeploy.ops import _ps_roi_align as psra


# ------------------------------------------------------------------------ slow, obvious reference
def _bilinear(plane: np.ndarray, y: float, x: float) -> float:
    """torchvision's bilinear_interpolate, line by line."""
    height, width = plane.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * plane[y_low, x_low]
        + hy * lx * plane[y_low, x_high]
        + ly * hx * plane[y_high, x_low]
        + ly * lx * plane[y_high, x_high]
    )


def reference_ps_roi_align(features, rois, pooled, spatial_scale, sampling_ratio):
    """torchvision's ps_roi_align CPU kernel as loops (float64); empty grid -> 0 (our rule)."""
    x = features.double().numpy()
    channels = x.shape[1]
    alpha = channels // (pooled * pooled)
    out = np.zeros((len(rois), alpha, pooled, pooled))
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        start_w, start_h = x1 * spatial_scale - 0.5, y1 * spatial_scale - 0.5
        roi_w = x2 * spatial_scale - 0.5 - start_w
        roi_h = y2 * spatial_scale - 0.5 - start_h
        bin_w, bin_h = roi_w / pooled, roi_h / pooled
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled)
        count = grid_h * grid_w
        for c in range(alpha):
            for i in range(pooled):
                for j in range(pooled):
                    plane = x[int(b), (c * pooled + i) * pooled + j]
                    total = 0.0
                    for iy in range(max(grid_h, 0)):
                        y = start_h + i * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(max(grid_w, 0)):
                            xx = start_w + j * bin_w + (ix + 0.5) * bin_w / grid_w
                            total += _bilinear(plane, y, xx)
                    out[k, c, i, j] = total / count if count > 0 else 0.0
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------- fixtures
SCALE = 1.0 / 8  # feature map 10 x 12 <-> image 80 x 96


def make_case(alpha: int, pooled: int, seed: int = 0):
    """Two images; boxes inside, partly outside, sub-pixel, degenerate, inverted, random."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, alpha * pooled * pooled, 10, 12, generator=g)
    rois = torch.tensor(
        [
            [0, 4.3, 6.1, 61.7, 50.2],  # inside
            [1, -30.5, -12.2, 41.3, 30.9],  # crosses the top-left border
            [0, 70.2, 55.1, 140.6, 120.3],  # mostly outside bottom-right
            [1, 33.3, 44.4, 35.1, 45.0],  # sub-pixel (0.2 x 0.1 feature px)
            [0, 20.0, 20.0, 20.0, 20.0],  # degenerate: empty adaptive grid -> 0
            [1, 50.3, 60.1, 20.2, 10.7],  # inverted corners
            [1, -200.0, -200.0, -150.0, -170.0],  # entirely outside -> 0
        ]
    )
    xy = torch.rand(5, 2, generator=g) * 90 - 5
    wh = torch.rand(5, 2, generator=g) * 60 + 0.3
    random_rois = torch.cat([torch.randint(0, 2, (5, 1), generator=g).float(), xy, xy + wh], 1)
    return features, torch.cat([rois, random_rois])


def assert_close(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    if expected.size == 0:
        return
    error = np.abs(actual - expected).max()
    bound = 1e-4 * np.abs(expected).max() + 1e-5
    assert error <= bound, f"max abs err {error:.3g} > {bound:.3g}"


# -------------------------------------------------------------------------------------- eager
@pytest.mark.parametrize("alpha, pooled", [(2, 3), (5, 7)])
@pytest.mark.parametrize("sampling_ratio", [2, -1, 1])
def test_eager_matches_loop_reference(alpha, pooled, sampling_ratio):
    features, rois = make_case(alpha, pooled)
    out = psra.ps_roi_align(features, rois, pooled, SCALE, sampling_ratio)
    assert out.shape == (len(rois), alpha, pooled, pooled)
    assert_close(out, reference_ps_roi_align(features, rois, pooled, SCALE, sampling_ratio))
    assert torch.isfinite(out).all()  # the degenerate box gives 0, not torchvision's NaN
    if sampling_ratio < 0:
        assert (out[4] == 0).all()
    assert (out[6] == 0).all()


def test_eager_empty_rois_and_list_boxes():
    features, rois = make_case(2, 3)
    empty = psra.ps_roi_align(features, rois[:0], 3, SCALE, 2)
    assert empty.shape == (0, 2, 3, 3)
    assert psra.ps_roi_align(features, rois[:0], 3, SCALE, -1).shape == (0, 2, 3, 3)
    # torchvision's list-of-[L, 4] form: one tensor per image.
    per_image = [rois[rois[:, 0] == b, 1:] for b in (0, 1)]
    sorted_rois = torch.cat([rois[rois[:, 0] == b] for b in (0, 1)])
    torch.testing.assert_close(
        psra.ps_roi_align(features, per_image, 3, SCALE, 2),
        psra.ps_roi_align(features, sorted_rois, 3, SCALE, 2),
        rtol=0,
        atol=0,
    )


def test_eager_blocks_of_samples_match_reference(monkeypatch):
    # Eager splits the sample grid into blocks so huge adaptive boxes stay in memory bounds; force
    # tiny blocks (several per axis) on an ordinary case and compare with the reference.
    monkeypatch.setattr(psra, "_MAX_GATHERED_PER_BLOCK", 64)
    features, rois = make_case(2, 3)
    out = psra.ps_roi_align(features, rois, 3, SCALE, -1)
    assert_close(out, reference_ps_roi_align(features, rois, 3, SCALE, -1))


def test_decomposition_equals_eager_and_rejects_adaptive():
    features, rois = make_case(5, 7)
    eager = psra.ps_roi_align(features, rois, 7, SCALE, 2)
    decomposed = psra.ps_roi_align_decomposition(features, rois, 7, 7, SCALE, 2)
    assert_close(decomposed, eager)
    with pytest.raises(ValueError, match="fixed sampling_ratio"):
        psra.ps_roi_align_decomposition(features, rois, 7, 7, SCALE, -1)


def test_tflite_form_equals_eager_and_rejects_adaptive():
    """The folded-weight form litert-torch converts: every case of make_case (outside, inverted,
    sub-pixel, two images) to float32 rounding, at two pooled sizes."""
    for alpha, pooled in [(2, 3), (5, 7)]:
        features, rois = make_case(alpha, pooled)
        eager = psra.ps_roi_align(features, rois, pooled, SCALE, 2)
        tflite_form = psra.ps_roi_align_tflite(features, rois, pooled, pooled, SCALE, 2)
        torch.testing.assert_close(tflite_form, eager, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fixed sampling_ratio"):
        psra.ps_roi_align_tflite(features, rois, 7, 7, SCALE, -1)


def test_user_errors_raise_value_error():
    with pytest.raises(ValueError, match="divisible"):
        psra.ps_roi_align(torch.randn(1, 10, 4, 4), torch.zeros(1, 5), 3)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        psra.ps_roi_align(torch.randn(1, 9, 4, 4), torch.zeros(1, 4), 3)


# --------------------------------------------------------------------------------------- ONNX
class PSRoIAlign(torch.nn.Module):
    def __init__(self, pooled: int, sampling_ratio: int):
        super().__init__()
        self.pooled, self.sampling_ratio = pooled, sampling_ratio

    def forward(self, features, rois):
        return psra.ps_roi_align(features, rois, self.pooled, SCALE, self.sampling_ratio)


def export_variant(variant: str, module, features, rois, path):
    import onnx

    table = lightdeploy.ops.onnx_translation_table()
    table[torch.ops.lightdeploy.ps_roi_align.default] = psra.ONNX_VARIANTS[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (features, rois),
            dynamo=True,
            custom_translation_table=table,
            opset_version=18,
            input_names=["features", "rois"],
            output_names=["pooled"],
            dynamic_shapes={"features": {}, "rois": {0: torch.export.Dim("K", min=0)}},
            external_data=False,
            verbose=False,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    rois_dim0 = model.graph.input[1].type.tensor_type.shape.dim[0]
    assert rois_dim0.dim_param, "K was specialised: the exported graph must keep it symbolic"
    return path


CASES = [
    (variant, alpha, pooled, ratio)
    for variant in psra.ONNX_VARIANTS
    for alpha, pooled, ratio in [(2, 3, 2), (2, 3, -1), (5, 7, 2)]
    if not (variant == "bilinear_gather" and ratio < 0)
]


@pytest.mark.parametrize("variant, alpha, pooled, sampling_ratio", CASES)
def test_onnx_lowering_matches_eager_in_onnxruntime(variant, alpha, pooled, sampling_ratio, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    features, rois = make_case(alpha, pooled, seed=1)
    module = PSRoIAlign(pooled, sampling_ratio)
    path = export_variant(variant, module, features, rois, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for count in (len(rois), 3, 0):  # dynamic K, including no RoIs at all
        feeds = {"features": features.numpy(), "rois": rois[:count].numpy()}
        (out,) = session.run(None, feeds)
        assert_close(out, module(features, rois[:count]))


def test_adaptive_is_rejected_by_bilinear_gather(tmp_path):
    features, rois = make_case(2, 3)
    with pytest.raises(Exception, match="fixed sampling_ratio"):
        export_variant("bilinear_gather", PSRoIAlign(3, -1), features, rois, tmp_path / "m.onnx")


def test_tables():
    op = torch.ops.lightdeploy.ps_roi_align.default
    assert lightdeploy.ops.onnx_translation_table()[op] is psra.ONNX_VARIANTS[psra.DEFAULT_ONNX_VARIANT]
    assert lightdeploy.ops.decomposition_table()[op] is psra.ps_roi_align_decomposition
    assert lightdeploy.ops.tflite_decomposition_table(kernels=False)[op] is psra.ps_roi_align_tflite
