"""ONNX lowerings of ``lightdeploy::ps_roi_align`` (see _ps_roi_align.py for semantics and timings).

Each function is onnxscript-traceable: it receives ``onnxscript.ir`` Values for ``input``
[N, C, H, W] and ``boxes`` [K, 5] (K and N may be symbolic; C, H, W must be static) plus the op's
Python attributes, and returns [K, C / (ph * pw), ph, pw].  All use opset 18 (RoiAlign-16:
``half_pixel`` is torchvision's -0.5 shift without a size clamp; onnxruntime 1.32 has no RoiAlign-22
kernel).
"""

from __future__ import annotations

import numpy as np


def _const(array, dtype=None):
    from onnxscript import ir
    from onnxscript import opset18 as op

    return op.Constant(value=ir.tensor(np.asarray(array, dtype=dtype)))


def _split_boxes(boxes):
    """boxes [K, 5] -> (batch index [K] int64, rois [K, 4] = x1, y1, x2, y2)."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    batch_index = op.Cast(op.Gather(boxes, _const(0, np.int64), axis=1), to=ir.DataType.INT64)
    rois = op.Slice(boxes, _const([1], np.int64), _const([5], np.int64), _const([1], np.int64))
    return batch_index, rois


def _static_chw(input):
    c, h, w = (input.shape[i] for i in (1, 2, 3))
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise ValueError(f"ps_roi_align ONNX lowering needs static C, H, W; got {input.shape}")
    return c, h, w


def _bin_sub_boxes(rois, pooled_height: int, pooled_width: int):
    """[K, 4] boxes -> [K, ph * pw, 4]: the image-coordinate box of every bin, row-major.

    RoiAlign(half_pixel) maps a sub-box x1' to x1' * scale - 0.5, so x1' = x1 + j * (x2 - x1) / pw
    puts its samples where ps_roi_align samples bin j (up to float rounding).
    """
    from onnxscript import opset18 as op

    i, j = np.meshgrid(np.arange(pooled_height), np.arange(pooled_width), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    # Where each bin starts and ends, as a fraction of the box: [1, bins, 4] for (x1, y1, x2, y2).
    fraction = np.stack([j / pooled_width, i / pooled_height, (j + 1) / pooled_width, (i + 1) / pooled_height], -1)[
        None
    ]
    x1y1 = op.Slice(rois, _const([0], np.int64), _const([2], np.int64), _const([1], np.int64))
    x2y2 = op.Slice(rois, _const([2], np.int64), _const([4], np.int64), _const([1], np.int64))
    wh = op.Sub(x2y2, x1y1)
    origin = op.Unsqueeze(op.Concat(x1y1, x1y1, axis=1), _const([1], np.int64))  # [K, 1, 4]
    size = op.Unsqueeze(op.Concat(wh, wh, axis=1), _const([1], np.int64))
    return op.Add(origin, op.Mul(size, _const(fraction, np.float32)))


def onnx_roi_align_all_channels(input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio):
    """RoiAlign on all C channels -> [K, C, ph, pw], then Gather each channel's own bin.

    Output element (a, i, j) is channel ch = a*ph*pw + i*pw + j at bin i*pw + j, i.e. flat index
    ch * ph * pw + ch % (ph * pw) of the [K, C * ph * pw] RoiAlign result (docs/models.md section 7.3).
    """
    from onnxscript import opset18 as op

    c, _, _ = _static_chw(input)
    bins = pooled_height * pooled_width
    batch_index, rois = _split_boxes(boxes)
    pooled = op.RoiAlign(
        input,
        rois,
        batch_index,
        coordinate_transformation_mode="half_pixel",
        mode="avg",
        output_height=pooled_height,
        output_width=pooled_width,
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
    )
    flat = op.Reshape(pooled, _const([-1, c * bins], np.int64))
    channel = np.arange(c, dtype=np.int64)
    diagonal = op.Gather(flat, _const(channel * bins + channel % bins, np.int64), axis=1)
    return op.Reshape(diagonal, _const([-1, c // bins, pooled_height, pooled_width], np.int64))


def onnx_roi_align_per_bin(input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio):
    """ph * pw RoiAlign nodes: bin b reads channels b, b + bins, ... with a 1x1 output per box."""
    from onnxscript import opset18 as op

    c, _, _ = _static_chw(input)
    bins = pooled_height * pooled_width
    batch_index, rois = _split_boxes(boxes)
    sub_boxes = _bin_sub_boxes(rois, pooled_height, pooled_width)  # [K, bins, 4]
    per_bin = []
    for b in range(bins):
        channels = op.Slice(
            input,
            _const([b], np.int64),
            _const([c], np.int64),
            _const([1], np.int64),
            _const([bins], np.int64),
        )  # [N, alpha, H, W]
        pooled = op.RoiAlign(
            channels,
            op.Gather(sub_boxes, _const(b, np.int64), axis=1),
            batch_index,
            coordinate_transformation_mode="half_pixel",
            mode="avg",
            output_height=1,
            output_width=1,
            sampling_ratio=max(sampling_ratio, 0),
            spatial_scale=spatial_scale,
        )  # [K, alpha, 1, 1]
        per_bin.append(pooled)
    stacked = op.Concat(*per_bin, axis=3)  # [K, alpha, 1, bins]
    return op.Reshape(stacked, _const([-1, c // bins, pooled_height, pooled_width], np.int64))


def onnx_roi_align_bins_as_batch(input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio):
    """One RoiAlign: each bin's channels become their own image, each (RoI, bin) its own 1x1 RoI.

    Channels are permuted bin-major (Gather), so [N, C, H, W] reshapes to [N * bins, alpha, H, W]
    with image n * bins + b holding bin b's channels; RoI (k, b) is bin b's sub-box of RoI k on
    image batch[k] * bins + b.  Samples ps_roi_align's points (up to the float rounding of the
    sub-box corners, ~1e-5 relative) with no ph*pw-fold blow-up of the work.
    """
    from onnxscript import opset18 as op

    c, h, w = _static_chw(input)
    bins = pooled_height * pooled_width
    alpha = c // bins
    batch_index, rois = _split_boxes(boxes)
    bin_major = np.arange(c, dtype=np.int64).reshape(alpha, bins).T.reshape(-1)
    images = op.Reshape(
        op.Gather(input, _const(bin_major, np.int64), axis=1),
        _const([-1, alpha, h, w], np.int64),
    )
    sub_boxes = op.Reshape(
        _bin_sub_boxes(rois, pooled_height, pooled_width), _const([-1, 4], np.int64)
    )  # [K * bins, 4], RoI-major
    sub_batch = op.Add(
        op.Mul(op.Unsqueeze(batch_index, _const([1], np.int64)), _const(bins, np.int64)),
        _const(np.arange(bins, dtype=np.int64)[None], np.int64),
    )  # [K, bins]
    pooled = op.RoiAlign(
        images,
        sub_boxes,
        op.Reshape(sub_batch, _const([-1], np.int64)),
        coordinate_transformation_mode="half_pixel",
        mode="avg",
        output_height=1,
        output_width=1,
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
    )  # [K * bins, alpha, 1, 1]
    per_roi = op.Transpose(op.Reshape(pooled, _const([-1, bins, alpha], np.int64)), perm=[0, 2, 1])
    return op.Reshape(per_roi, _const([-1, alpha, pooled_height, pooled_width], np.int64))


def _onnx_bilinear_taps(start, bin_size, pooled: int, grid: int, size: int):
    """ONNX twin of ps_roi_align._bilinear_taps, fixed grid.

    start, bin_size: [K, 1] -> (index int64, weight float) [K, pooled, 2 * grid].
    """
    from onnxscript import ir
    from onnxscript import opset18 as op

    bins = _const(np.arange(pooled, dtype=np.float32)[None], np.float32)  # [1, pooled]
    samples = _const((np.arange(grid, dtype=np.float32) + 0.5)[None, None], np.float32)
    bin_start = op.Unsqueeze(op.Add(op.Mul(bins, bin_size), start), _const([2], np.int64))
    step = op.Div(op.Mul(samples, op.Unsqueeze(bin_size, _const([2], np.int64))), _const(float(grid), np.float32))
    pos = op.Add(bin_start, step)  # [K, pooled, grid]
    valid = op.And(
        op.GreaterOrEqual(pos, _const(-1.0, np.float32)), op.LessOrEqual(pos, _const(float(size), np.float32))
    )
    pos = op.Max(pos, _const(0.0, np.float32))
    last = _const(float(size - 1), np.float32)
    low = op.Min(op.Floor(pos), last)
    high = op.Min(op.Add(low, _const(1.0, np.float32)), last)
    frac = op.Sub(pos, low)
    scale = op.Mul(op.Cast(valid, to=ir.DataType.FLOAT), _const(1.0 / grid, np.float32))
    index = op.Cast(op.Concat(low, high, axis=-1), to=ir.DataType.INT64)
    weight = op.Concat(op.Mul(op.Sub(_const(1.0, np.float32), frac), scale), op.Mul(frac, scale), axis=-1)
    return index, weight


def onnx_bilinear_gather(input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio):
    """No RoiAlign: the eager math (ps_roi_align._gather_average), fixed grid only.

    Bilinear taps as arithmetic, one row Gather from the bin-major [N * bins * H * W, alpha] map,
    two ReduceSums.
    """
    from onnxscript import opset18 as op

    if sampling_ratio <= 0:
        raise ValueError(
            "ps_roi_align 'bilinear_gather' lowering needs a fixed sampling_ratio > 0 "
            f"(got {sampling_ratio}); use a RoiAlign lowering for adaptive sampling"
        )
    c, h, w = _static_chw(input)
    bins = pooled_height * pooled_width
    batch_index, rois = _split_boxes(boxes)
    col = [
        op.Slice(rois, _const([k], np.int64), _const([k + 1], np.int64), _const([1], np.int64)) for k in range(4)
    ]  # each [K, 1]
    scale, half = _const(spatial_scale, np.float32), _const(0.5, np.float32)
    start_x, start_y = op.Sub(op.Mul(col[0], scale), half), op.Sub(op.Mul(col[1], scale), half)
    bin_w = op.Div(op.Sub(op.Sub(op.Mul(col[2], scale), half), start_x), _const(float(pooled_width), np.float32))
    bin_h = op.Div(op.Sub(op.Sub(op.Mul(col[3], scale), half), start_y), _const(float(pooled_height), np.float32))
    index_y, weight_y = _onnx_bilinear_taps(start_y, bin_h, pooled_height, sampling_ratio, h)
    index_x, weight_x = _onnx_bilinear_taps(start_x, bin_w, pooled_width, sampling_ratio, w)

    alpha = c // bins
    # Rows (n, bin, y, x) of alpha channels, as ps_roi_align._bin_major_rows: rank 4 at most.
    rows = op.Reshape(
        op.Transpose(op.Reshape(input, _const([-1, alpha, bins, h * w], np.int64)), perm=[0, 2, 3, 1]),
        _const([-1, alpha], np.int64),
    )
    bin_ids = np.arange(bins, dtype=np.int64).reshape(1, pooled_height, pooled_width)
    batch = op.Reshape(batch_index, _const([-1, 1, 1], np.int64))
    plane = op.Mul(
        op.Add(op.Mul(batch, _const(bins, np.int64)), _const(bin_ids, np.int64)), _const(h * w, np.int64)
    )  # [K, ph, pw]
    row_index = op.Add(
        op.Add(
            op.Unsqueeze(plane, _const([3, 4], np.int64)),
            op.Unsqueeze(op.Mul(index_y, _const(w, np.int64)), _const([2, 4], np.int64)),
        ),
        op.Unsqueeze(index_x, _const([1, 3], np.int64)),
    )  # [K, ph, pw, Ty, Tx]
    values = op.Gather(rows, row_index, axis=0)  # [K, ph, pw, Ty, Tx, alpha]
    weight_x = op.Unsqueeze(weight_x, _const([1, 3, 5], np.int64))  # [K, 1, pw, 1, Tx, 1]
    summed_x = op.ReduceSum(op.Mul(values, weight_x), _const([4], np.int64), keepdims=0)
    summed = op.ReduceSum(
        op.Mul(summed_x, op.Unsqueeze(weight_y, _const([2, 4], np.int64))), _const([3], np.int64), keepdims=0
    )  # [K, ph, pw, alpha]
    return op.Transpose(summed, perm=[0, 3, 1, 2])
