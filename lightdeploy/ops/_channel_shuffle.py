"""Channel shuffle (ShuffleNet V1/V2, SNet): interleave the channels of ``groups`` groups.

Schema::

    lightdeploy::channel_shuffle(Tensor x, int groups) -> Tensor
        x: [N, C, H, W] with C % groups == 0
        out[:, k * groups + g] = x[:, g * (C // groups) + k]

Eager: reshape [N, g, C/g, H, W] -> transpose(1, 2) -> reshape [N, C, H, W] (torchvision's form).
ONNX: one ``Gather(axis=1)`` with a constant permutation, measured as fast as or faster than the
Reshape-Transpose-Reshape alternative (``bench/channel_shuffle.py``; docs/measurements.md#channel-shuffle);
it needs no shape arithmetic for a dynamic batch and has no 5-D or transposed tensor, which TFLite and
NPU compilers prefer.  (OpenVINO folds a channel Gather into the next Conv with the wrong permutation;
``exporters/openvino/rewrites.py`` rewrites it.)
"""

from __future__ import annotations

import numpy as np
import torch

OP_NAME = "lightdeploy::channel_shuffle"


def shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """The input channel feeding each output channel: out[:, i] = x[:, perm[i]]."""
    return np.arange(channels, dtype=np.int64).reshape(groups, channels // groups).T.reshape(-1)


def channel_shuffle_reference(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Plain tensor code (torchvision's form), the plain decomposition."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def channel_shuffle_channel_last(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The same permutation written on the NHWC view: the TFLite decomposition.

    litert-torch runs convolutions channel-last; on the reference form its layout pass brackets the
    5-D reshape with TRANSPOSEs to NCHW and back (three per shuffle).  Written channel-last, the outer
    permutes cancel the pass's own and one TRANSPOSE of the last two axes remains
    (docs/measurements.md#tflite-builtin-nms).  Data movement only: exact.
    """
    n, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c)
    return y.permute(0, 3, 1, 2)


@torch.library.custom_op(OP_NAME, mutates_args=())
def _channel_shuffle_op(x: torch.Tensor, groups: int) -> torch.Tensor:
    return channel_shuffle_reference(x, groups)


@_channel_shuffle_op.register_fake
def _channel_shuffle_fake(x: torch.Tensor, groups: int) -> torch.Tensor:
    torch._check(x.shape[1] % groups == 0)
    return torch.empty_like(x)


# ------------------------------------------------------------------------------------------ autograd
# A shuffle is a channel permutation, so its gradient is the inverse permutation: shuffling C
# channels in g groups is undone by shuffling them in C/g groups (transposing a g x C/g grid twice).
# The backward calls the op itself, so double backward works too and exports never see this.
def _channel_shuffle_setup_context(ctx, inputs, output) -> None:
    x, groups = inputs
    ctx.inverse_groups = x.shape[1] // groups


def _channel_shuffle_backward(ctx, grad_output):
    return torch.ops.lightdeploy.channel_shuffle(grad_output, ctx.inverse_groups), None


_channel_shuffle_op.register_autograd(_channel_shuffle_backward, setup_context=_channel_shuffle_setup_context)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet): x [N, C, H, W], C % groups == 0."""
    if x.dim() != 4:
        raise ValueError(f"channel_shuffle takes [N, C, H, W], got shape {tuple(x.shape)}")
    if groups < 1 or x.shape[1] % groups:
        raise ValueError(f"channel_shuffle needs channels ({x.shape[1]}) divisible by groups ({groups})")
    return torch.ops.lightdeploy.channel_shuffle(x, int(groups))


# ---------------------------------------------------------------------------------- ONNX translations
def onnx_channel_shuffle_gather(x, groups: int):
    """``Gather(x, const perm, axis=1)``: rank 4 throughout, any batch/H/W (needs static C)."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    perm = shuffle_permutation(int(x.shape[1]), groups)
    return op.Gather(x, op.Constant(value=ir.tensor(perm, name="shuffle_perm")), axis=1)


def onnx_channel_shuffle_reshape(x, groups: int):
    """Reshape [N, g, C/g, H*W], Transpose(0, 2, 1, 3), Reshape back to x's shape (the alternative)."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    c = int(x.shape[1])
    grouped = op.Constant(value=ir.tensor(np.array([0, groups, c // groups, -1], np.int64)))
    y = op.Transpose(op.Reshape(x, grouped), perm=[0, 2, 1, 3])
    return op.Reshape(y, op.Shape(x))


ONNX_TRANSLATIONS = {torch.ops.lightdeploy.channel_shuffle.default: onnx_channel_shuffle_gather}
ONNX_VARIANTS = {
    "gather": onnx_channel_shuffle_gather,
    "reshape": onnx_channel_shuffle_reshape,
}
# Plain-tensor bodies for converters that cannot take a custom op (litert-torch).
DECOMPOSITIONS = {torch.ops.lightdeploy.channel_shuffle.default: channel_shuffle_reference}
TFLITE_DECOMPOSITIONS = {torch.ops.lightdeploy.channel_shuffle.default: channel_shuffle_channel_last}
