"""Position-sensitive RoIAlign (R-FCN, Light-Head R-CNN, ThunderNet), torchvision's semantics.

Schema::

    lightdeploy::ps_roi_align(Tensor input, Tensor boxes, int pooled_height, int pooled_width,
                              float spatial_scale, int sampling_ratio) -> Tensor
        input: [N, C, H, W] float, C % (pooled_height * pooled_width) == 0
        boxes: [K, 5] float = (batch index, x1, y1, x2, y2) in input-image coordinates
        out:   [K, C / (ph * pw), ph, pw]
        out[k, c, i, j] = average over a grid of bilinear samples inside bin (i, j) of RoI k,
                          read from input channel c * ph * pw + i * pw + j of image boxes[k, 0]

Semantics are exactly ``torchvision.ops.ps_roi_align`` (docs/models.md section 7.1):
- the box is mapped to ``x * spatial_scale - 0.5`` (always; no size clamp, so sub-pixel boxes stay
  sub-pixel); bin size = roi size / pooled size;
- grid = sampling_ratio if > 0, else ceil(roi_h / ph) x ceil(roi_w / pw) per RoI ("adaptive");
- bilinear rule: a sample with y < -1 or y > H (or x likewise) is 0; otherwise clamp to >= 0 and
  clamp the cell to the last row/column.
- One deliberate difference: a degenerate box with adaptive sampling has an empty grid.  torchvision
  returns NaN there (0/0); this op returns 0, like ONNX RoiAlign (count = max(count, 1)), so every
  lowering agrees.

Eager: vectorised over all RoIs (``_bilinear_taps`` + ``_gather_average``): per-axis bilinear taps
(index, weight), then one gather of rows from the feature map laid out bin-major
[N * ph*pw * H * W, alpha] (all alpha channels of a bin in one row), two weighted sums.  Adaptive
sampling is supported: every RoI's grid is padded to the largest and masked (in blocks, so a huge
box cannot allocate gigabytes).  Decomposition for converters without custom ops:
``ps_roi_align_decomposition``, the same code with a fixed grid: builtin ops only, rank <= 6, static
shapes; it raises ValueError for adaptive sampling (the grid size would depend on the box values).
TFLite (litert-torch) takes ``ps_roi_align_tflite``: the same gather with the two per-axis weights
folded into one, so one weighted sum instead of two (equal to float32 rounding).

ONNX lowerings (``_ps_roi_align_lowerings.py``), all opset 18 (RoiAlign-16, half_pixel, avg):
- ``roi_align_all_channels``: RoiAlign over all C channels, then a Gather of the diagonal bins
  (docs/models.md section 7.3); computes ph*pw times the needed samples.
- ``roi_align_per_bin``: ph*pw RoiAlign nodes, each 1x1 on one bin's sub-box and a strided channel
  slice.
- ``roi_align_bins_as_batch``: one RoiAlign: the channels are permuted bin-major and reshaped so
  each bin is its own "image" [N*ph*pw, C/(ph*pw), H, W]; K*ph*pw sub-box RoIs, 1x1 output each.
- ``bilinear_gather``: no RoiAlign: the eager math as arithmetic + one row Gather + two ReduceSums
  (for backends without RoiAlign).  Fixed sampling ratio only (ValueError at export otherwise).
The sub-box lowerings (per_bin, bins_as_batch) compute each bin's box corners in float32, so they
match eager to ~1e-5 relative rather than ~1e-7; with adaptive sampling their grid is
ceil(sub_box_h / 1) instead of ceil(roi_h / ph), equal unless roi_h / ph is within float rounding
of an integer (then one more or one fewer sample row).  Detectors use sampling_ratio=2.
Default ONNX translation: ``roi_align_bins_as_batch``, the fastest at ThunderNet's and Light-Head's sizes in
ONNX Runtime and OpenVINO, with one RoiAlign node instead of 49 (``bench/ps_roi_align.py``;
docs/measurements.md#psroialign).  The others stay in ``ONNX_VARIANTS`` for backends that lack
RoiAlign (``bilinear_gather``) or as the literal recipe (``roi_align_all_channels``).
"""

from __future__ import annotations

import torch

from lightdeploy.ops import _ps_roi_align_lowerings as lowerings

OP_NAME = "lightdeploy::ps_roi_align"

# Eager processes the sample grid in blocks of at most this many gathered values, so a huge box with
# adaptive sampling cannot allocate gigabytes; detector sizes (grid 2) always fit in one block.
_MAX_GATHERED_PER_BLOCK = 1 << 23


# ------------------------------------------------------------------------------------ shared math
def _bilinear_taps(start, bin_size, pooled: int, grid, grid_max: int, size: int):
    """The two bilinear taps of every sample along one axis.

    start, bin_size: [K] (feature-map coordinates, after the -0.5 shift).
    grid: an int (fixed sampling ratio) or a [K] integer tensor (adaptive; samples >= grid masked).
    Returns (index [K, pooled, 2 * grid_max] int64, weight [K, pooled, 2 * grid_max]); the weight
    already holds the 1/grid of the average and is 0 for samples outside [-1, size].
    Separable: the 2-D bilinear weight of a sample is weight_y * weight_x, and torchvision's "0 if y
    or x is out of range" is the product of the two per-axis masks.
    """
    dtype = start.dtype
    bins = torch.arange(pooled, dtype=dtype, device=start.device)
    samples = torch.arange(grid_max, dtype=dtype, device=start.device) + 0.5
    # Same order of float operations as torchvision: hstart = i * bin + start; + (s + .5) * bin / g.
    bin_start = bins[None, :] * bin_size[:, None] + start[:, None]  # [K, pooled]
    if isinstance(grid, int):
        step = samples[None, None, :] * bin_size[:, None, None] / grid
        in_grid = None
        inv_grid = 1.0 / grid
    else:
        safe_grid = grid.clamp(min=1).to(dtype)[:, None, None]  # empty grids are masked below
        step = samples[None, None, :] * bin_size[:, None, None] / safe_grid
        sample_ids = torch.arange(grid_max, device=start.device)
        in_grid = sample_ids[None, None, :] < grid[:, None, None]
        inv_grid = 1.0 / safe_grid
    pos = bin_start[:, :, None] + step  # [K, pooled, grid_max]

    valid = (pos >= -1.0) & (pos <= float(size))
    if in_grid is not None:
        valid = valid & in_grid
    pos = pos.clamp(min=0.0)
    low = pos.floor().clamp(max=float(size - 1))
    high = (low + 1.0).clamp(max=float(size - 1))
    # At the last row low == high, so the split of the weight between them does not matter.
    frac = pos - low
    scale = valid.to(dtype) * inv_grid
    index = torch.cat([low, high], dim=-1).to(torch.int64)
    weight = torch.cat([(1.0 - frac) * scale, frac * scale], dim=-1)
    return index, weight


def _box_geometry(boxes, pooled_height: int, pooled_width: int, spatial_scale: float):
    """Batch index [K] and per-axis (start, bin size) [K] in feature coordinates (-0.5 shift)."""
    batch_index = boxes[:, 0].to(torch.int64)
    start_x = boxes[:, 1] * spatial_scale - 0.5
    start_y = boxes[:, 2] * spatial_scale - 0.5
    bin_w = (boxes[:, 3] * spatial_scale - 0.5 - start_x) / pooled_width
    bin_h = (boxes[:, 4] * spatial_scale - 0.5 - start_y) / pooled_height
    return batch_index, (start_y, bin_h), (start_x, bin_w)


def _bin_major_rows(input, pooled_height: int, pooled_width: int):
    """[N, C, H, W] -> [N * bins * H * W, alpha]: row (n, bin, y, x) = that bin's alpha channels.

    Channel a * bins + b is output channel a of bin b, so one gathered row serves all alpha output
    channels of a bin: K * bins * taps row gathers instead of K * C * taps scalar gathers.
    """
    n, c, h, w = input.shape
    bins = pooled_height * pooled_width
    return input.reshape(n, c // bins, bins, h * w).permute(0, 2, 3, 1).reshape(-1, c // bins)


def _gather_taps(rows, shape, batch_index, index_y, index_x, pooled_height: int, pooled_width: int):
    """The rows of ``_bin_major_rows`` under every (y tap, x tap) of every bin: [K, ph, pw, Ty, Tx, alpha]
    (rank 6, the TFLite limit).  shape: the input's (N, C, H, W)."""
    _, _, h, w = shape
    bins = torch.arange(pooled_height * pooled_width, device=rows.device)
    bins = bins.reshape(pooled_height, pooled_width)
    plane = (batch_index[:, None, None] * (pooled_height * pooled_width) + bins[None]) * (h * w)
    row_index = (
        plane[:, :, :, None, None]  # [K, ph, pw, 1, 1]
        + (index_y * w)[:, :, None, :, None]
        + index_x[:, None, :, None, :]
    )  # [K, ph, pw, Ty, Tx]
    return rows[row_index]


def _gather_average(rows, shape, batch_index, taps_y, taps_x, pooled_height: int, pooled_width: int):
    """Sum of weight_y * weight_x * value over the taps: one row gather from ``_bin_major_rows``, then
    the x sum and the y sum; returns [K, alpha, ph, pw]."""
    index_y, weight_y = taps_y  # [K, ph, Ty]
    index_x, weight_x = taps_x  # [K, pw, Tx]
    values = _gather_taps(rows, shape, batch_index, index_y, index_x, pooled_height, pooled_width)
    summed_x = (values * weight_x[:, None, :, None, :, None]).sum(dim=-2)  # [K, ph, pw, Ty, alpha]
    summed = (summed_x * weight_y[:, :, None, :, None]).sum(dim=-2)  # [K, ph, pw, alpha]
    return summed.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------- eager
def ps_roi_align_eager(
    input: torch.Tensor,
    boxes: torch.Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    sampling_ratio: int,
) -> torch.Tensor:
    """Vectorised over RoIs; adaptive sampling pads every RoI's grid to the largest and masks."""
    _, h, w = input.shape[1:]
    batch_index, (start_y, bin_h), (start_x, bin_w) = _box_geometry(boxes, pooled_height, pooled_width, spatial_scale)
    if sampling_ratio > 0:
        grid_h = grid_w = sampling_ratio
        grid_h_max = grid_w_max = sampling_ratio
    else:
        # ceil(roi / pooled) == ceil(bin); <= 0 for degenerate boxes, which then output 0.
        grid_h = torch.ceil(bin_h).to(torch.int64)
        grid_w = torch.ceil(bin_w).to(torch.int64)
        grid_h_max = int(grid_h.max().clamp(min=0)) if len(boxes) else 0
        grid_w_max = int(grid_w.max().clamp(min=0)) if len(boxes) else 0
    taps_y = _bilinear_taps(start_y, bin_h, pooled_height, grid_h, grid_h_max, h)
    taps_x = _bilinear_taps(start_x, bin_w, pooled_width, grid_w, grid_w_max, w)

    out_channels = input.shape[1] // (pooled_height * pooled_width)
    rows = _bin_major_rows(input, pooled_height, pooled_width)
    per_tap = max(1, len(boxes) * input.shape[1])
    block = max(1, int((_MAX_GATHERED_PER_BLOCK / per_tap) ** 0.5))
    total_y, total_x = taps_y[0].shape[-1], taps_x[0].shape[-1]
    out = input.new_zeros(len(boxes), out_channels, pooled_height, pooled_width)
    for y0 in range(0, total_y, block):  # one iteration unless a huge box is sampled adaptively
        ys = slice(y0, y0 + block)
        for x0 in range(0, total_x, block):
            xs = slice(x0, x0 + block)
            out += _gather_average(
                rows,
                input.shape,
                batch_index,
                (taps_y[0][..., ys], taps_y[1][..., ys]),
                (taps_x[0][..., xs], taps_x[1][..., xs]),
                pooled_height,
                pooled_width,
            )
    return out


def _fixed_grid(input, boxes, pooled_height: int, pooled_width: int, spatial_scale: float, sampling_ratio: int):
    """(rows, batch index, taps_y, taps_x) for a fixed sampling grid; adaptive sampling is refused."""
    if sampling_ratio <= 0:
        raise ValueError(
            "ps_roi_align decomposition needs a fixed sampling_ratio > 0: adaptive sampling "
            f"(got {sampling_ratio}) makes the sample grid depend on the box values"
        )
    _, h, w = input.shape[1:]
    batch_index, (start_y, bin_h), (start_x, bin_w) = _box_geometry(boxes, pooled_height, pooled_width, spatial_scale)
    taps_y = _bilinear_taps(start_y, bin_h, pooled_height, sampling_ratio, sampling_ratio, h)
    taps_x = _bilinear_taps(start_x, bin_w, pooled_width, sampling_ratio, sampling_ratio, w)
    return _bin_major_rows(input, pooled_height, pooled_width), batch_index, taps_y, taps_x


def ps_roi_align_decomposition(
    input: torch.Tensor,
    boxes: torch.Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    sampling_ratio: int,
) -> torch.Tensor:
    """Builtin ops only, static shapes, rank <= 6: eager's code on a fixed grid."""
    rows, batch_index, taps_y, taps_x = _fixed_grid(
        input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio
    )
    return _gather_average(rows, input.shape, batch_index, taps_y, taps_x, pooled_height, pooled_width)


def ps_roi_align_tflite(
    input: torch.Tensor,
    boxes: torch.Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    sampling_ratio: int,
) -> torch.Tensor:
    """The TFLite decomposition: the same gather, with weight_y * weight_x folded into one weight per
    tap, so one MUL and one SUM over both tap axes run on the gathered values instead of two of each
    (half the passes over the gathered values; docs/measurements.md#tflite-builtin-nms).  The products
    are rounded in another order than eager's, so it matches eager to float32 rounding, not bit
    for bit (tests/test_ps_roi_align.py holds it to 1e-5 relative).  Fixed grid only."""
    rows, batch_index, (index_y, weight_y), (index_x, weight_x) = _fixed_grid(
        input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio
    )
    values = _gather_taps(rows, input.shape, batch_index, index_y, index_x, pooled_height, pooled_width)
    weight = weight_y[:, :, None, :, None] * weight_x[:, None, :, None, :]  # [K, ph, pw, Ty, Tx]
    return (values * weight[..., None]).sum(dim=(3, 4)).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------ custom op
@torch.library.custom_op(OP_NAME, mutates_args=())
def _ps_roi_align_op(
    input: torch.Tensor,
    boxes: torch.Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    sampling_ratio: int,
) -> torch.Tensor:
    return ps_roi_align_eager(input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio)


@_ps_roi_align_op.register_fake
def _ps_roi_align_fake(input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio):
    bins = pooled_height * pooled_width
    torch._check(input.shape[1] % bins == 0)
    return input.new_empty(boxes.shape[0], input.shape[1] // bins, pooled_height, pooled_width)


# ------------------------------------------------------------------------------------------ autograd
# Gradient to ``input`` only, as torchvision: the box coordinates only choose where to sample (their
# gradient through the bilinear weights is ignored there too).  The op is linear in ``input`` (a
# weighted sum of gathered values), so its vector-Jacobian product is obtained by differentiating the
# plain-tensor eager code once more on a detached copy: the gather's backward is a scatter-add of the
# same taps, with adaptive grids, masks and blocks handled by the one implementation that is tested.
def _ps_roi_align_setup_context(ctx, inputs, output) -> None:
    input, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio = inputs
    ctx.save_for_backward(input, boxes)
    ctx.args = (pooled_height, pooled_width, spatial_scale, sampling_ratio)


def _ps_roi_align_backward(ctx, grad_output):
    input, boxes = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        with torch.enable_grad():
            x = input.detach().requires_grad_(True)
            out = ps_roi_align_eager(x, boxes.detach(), *ctx.args)
            (grad_input,) = torch.autograd.grad(out, x, grad_output)
    return grad_input, None, None, None, None, None


_ps_roi_align_op.register_autograd(_ps_roi_align_backward, setup_context=_ps_roi_align_setup_context)


def _boxes_to_rois(boxes) -> torch.Tensor:
    """Accept torchvision's list-of-[L, 4] form too (one tensor per image) -> [K, 5]."""
    if isinstance(boxes, torch.Tensor):
        return boxes
    rois = [torch.cat([torch.full_like(b[:, :1], float(i)), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois, dim=0)


def ps_roi_align(
    input: torch.Tensor,
    boxes,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> torch.Tensor:
    """torchvision.ops.ps_roi_align's signature and semantics, as the custom op ``OP_NAME``.

    boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L, 4], one per image.
    output_size: int or (height, width).  sampling_ratio <= 0 means adaptive.
    """
    pooled_height, pooled_width = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    rois = _boxes_to_rois(boxes)
    if input.dim() != 4:
        raise ValueError(f"ps_roi_align input must be [N, C, H, W], got shape {tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"ps_roi_align boxes must be [K, 5], got shape {tuple(rois.shape)}")
    if pooled_height < 1 or pooled_width < 1:
        raise ValueError(f"ps_roi_align output_size must be positive, got {output_size}")
    if input.shape[1] % (pooled_height * pooled_width) != 0:
        raise ValueError(
            f"ps_roi_align needs channels ({input.shape[1]}) divisible by "
            f"output height * width ({pooled_height * pooled_width})"
        )
    return torch.ops.lightdeploy.ps_roi_align(
        input,
        rois.to(input.dtype),
        pooled_height,
        pooled_width,
        float(spatial_scale),
        int(sampling_ratio),
    )


# --------------------------------------------------------------------------------------- tables
_OP = torch.ops.lightdeploy.ps_roi_align.default
ONNX_VARIANTS = {
    "roi_align_all_channels": lowerings.onnx_roi_align_all_channels,
    "roi_align_per_bin": lowerings.onnx_roi_align_per_bin,
    "roi_align_bins_as_batch": lowerings.onnx_roi_align_bins_as_batch,
    "bilinear_gather": lowerings.onnx_bilinear_gather,
}
DEFAULT_ONNX_VARIANT = "roi_align_bins_as_batch"
ONNX_TRANSLATIONS = {_OP: ONNX_VARIANTS[DEFAULT_ONNX_VARIANT]}
# Plain-tensor body for converters that cannot take a custom op (litert-torch); fixed grid only.
DECOMPOSITIONS = {_OP: ps_roi_align_decomposition}
# litert-torch's form (``lightdeploy.ops.tflite_decomposition_table``).
TFLITE_DECOMPOSITIONS = {_OP: ps_roi_align_tflite}
