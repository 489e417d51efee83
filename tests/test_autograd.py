"""Autograd of the custom ops: gradcheck in float64 and backward through the models built on them.

The formulas live next to each op (``register_autograd`` in ``lightdeploy/ops``): channel_shuffle's
backward is the inverse shuffle, ps_roi_align's is the vector-Jacobian product of its eager code
(to ``input`` only, torchvision's semantics), NMS is explicitly non-differentiable.
"""

from __future__ import annotations

import pytest
import torch

import lightdeploy
from lightdeploy.ops import channel_shuffle, nms, nms_fixed, ps_roi_align
from lightdeploy.ops._channel_shuffle import channel_shuffle_reference


@pytest.mark.parametrize("groups", [2, 3])
def test_channel_shuffle_gradcheck(groups):
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: channel_shuffle(t, groups), (x,))
    assert torch.autograd.gradgradcheck(lambda t: channel_shuffle(t, groups), (x,))


def test_channel_shuffle_gradient_is_the_inverse_permutation():
    x = torch.randn(1, 12, 2, 2, requires_grad=True)
    grad_out = torch.randn(1, 12, 2, 2)
    channel_shuffle(x, 3).backward(grad_out)
    reference = x.detach().clone().requires_grad_(True)
    channel_shuffle_reference(reference, 3).backward(grad_out)
    assert torch.equal(x.grad, reference.grad)
    assert torch.equal(x.grad, channel_shuffle(grad_out, 4))  # groups C/g undoes groups g


# Boxes in input-image coordinates (spatial scale 1/4 on a 6x7 map = a 24x28 image): inside, partly
# outside (samples beyond the border are zero), tiny (sub-bin), and on the second image.
_BOXES = torch.tensor(
    [[0, 1.0, 1.0, 20.0, 17.0], [1, -6.0, 3.0, 13.0, 30.0], [0, 9.0, 9.0, 9.6, 10.1], [1, 4.0, 2.0, 27.0, 23.0]],
    dtype=torch.float64,
)


@pytest.mark.parametrize("sampling_ratio", [2, 1, -1], ids=["fixed2", "fixed1", "adaptive"])
def test_ps_roi_align_gradcheck(sampling_ratio):
    # Bilinear sampling is linear in the input, so finite differences are exact up to float64 noise.
    x = torch.randn(2, 2 * 3 * 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: ps_roi_align(t, _BOXES, 3, spatial_scale=0.25, sampling_ratio=sampling_ratio), (x,)
    )


def test_ps_roi_align_gives_no_gradient_to_boxes():
    x = torch.randn(2, 18, 6, 7, requires_grad=True)
    boxes = _BOXES.float().requires_grad_(True)
    ps_roi_align(x, boxes, 3, spatial_scale=0.25, sampling_ratio=2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert boxes.grad is None  # torchvision's semantics: no gradient to the boxes


def test_nms_indices_are_non_differentiable_and_harmless():
    torch.manual_seed(0)
    corners = torch.rand(20, 2) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(20, 2) * 20], dim=1).requires_grad_(True)
    scores = torch.rand(20, requires_grad=True)
    keep = nms(boxes * 1, scores * 1, 0.5)
    padded, num = nms_fixed(boxes * 1, scores * 1, 0.5, 8)
    assert not keep.requires_grad and not padded.requires_grad and not num.requires_grad
    # Gradients flow through the indexing of the kept boxes, never through the choice itself.
    (boxes[keep].sum() + scores[padded.clamp(min=0)].sum()).backward()
    expected = torch.zeros(20)
    expected[keep] = 4.0
    assert torch.equal(boxes.grad.sum(dim=1), expected)
    assert torch.equal(scores.grad, torch.bincount(padded.clamp(min=0), minlength=20).float())


def test_backward_through_snet49_in_train_mode():
    torch.manual_seed(0)
    model = lightdeploy.create_model("snet49", num_classes=5, calibrate_bn=False).train()
    x = torch.randn(2, 3, 64, 64)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    first_conv = next(model.parameters())
    assert first_conv.grad.abs().sum() > 0  # reached the stem, through every channel shuffle


def test_backward_through_thundernet_raw_heads():
    torch.manual_seed(0)
    model = lightdeploy.create_model(
        "thundernet_snet49", num_classes=3, input_size=(96, 96), calibrate_bn=False
    ).train()
    outputs = model.detect(torch.randn(2, 3, 96, 96), raw=True)
    rpn_logits, rpn_deltas, proposals, rcnn_logits, rcnn_deltas = outputs[4:]
    loss = (
        torch.nn.functional.binary_cross_entropy_with_logits(rpn_logits, torch.zeros_like(rpn_logits))
        + rpn_deltas.square().mean()
        + torch.nn.functional.cross_entropy(
            rcnn_logits.flatten(0, 1), torch.zeros(rcnn_logits.shape[:2].numel(), dtype=torch.long)
        )
        + rcnn_deltas.square().mean()
    )
    loss.backward()
    # The R-CNN loss reaches the backbone through ps_roi_align and SAM, the RPN's through CEM.
    for name in ("backbone", "cem", "rpn", "sam", "head"):
        part = getattr(model, name)
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads, name
        assert all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
