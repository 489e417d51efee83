"""``nms_fixed`` on TFLite's NON_MAX_SUPPRESSION_V5 (lightdeploy/ops/_nms_builtin.py): the form equals
torchvision's greedy NMS on the cases the kernel answers differently (ties, IoU at the threshold,
zero-area boxes, thresholds >= 1), the eager model of the kernel shows the kernel's own behaviour,
and the converted graph uses the builtin and equals eager in LiteRT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_nms import CASES, IDS, FixedNMSModule, convert_to_tflite, random_boxes, reference_nms

import lightdeploy.ops
from lightdeploy.ops import _nms as nms_ops
from lightdeploy.ops import _nms_builtin as builtin


# -------------------------------------------------------------------------------------- eager
@pytest.mark.parametrize("name, boxes, scores, threshold", CASES, ids=IDS)
@pytest.mark.parametrize("max_output", [1, 7, 100])
def test_builtin_form_equals_greedy(name, boxes, scores, threshold, max_output):
    greedy = reference_nms(boxes, scores, threshold)[:max_output]
    keep, num_kept = builtin.nms_fixed_builtin(boxes, scores, threshold, max_output)
    assert keep.tolist() == greedy + [-1] * (max_output - len(greedy))
    assert int(num_kept) == len(greedy) and num_kept.shape == () and keep.dtype == torch.int64


@pytest.mark.parametrize("seed", range(6))
def test_builtin_form_equals_greedy_on_random_sets(seed):
    """Ties, duplicates and zero-area boxes together, cut before, at and after the kept count."""
    n = 60 + 40 * seed
    boxes, scores = random_boxes(n, seed=200 + seed)
    boxes[n // 2 :] = boxes[: n - n // 2]  # duplicates: IoU 1 with their twin
    boxes[::5, 2:] = boxes[::5, :2]  # zero-area
    threshold = 0.15 + 0.1 * seed
    greedy = reference_nms(boxes, scores, threshold)
    for max_output in (1, len(greedy) - 1, len(greedy), len(greedy) + 5):
        keep, num_kept = builtin.nms_fixed_builtin(boxes, scores, threshold, max_output)
        cut = greedy[:max_output]
        assert keep.tolist() == cut + [-1] * (max_output - len(cut)) and int(num_kept) == len(cut)


def test_threshold_nudge_turns_greater_equal_into_greater():
    for t in (0.0, 1 / 3, 0.5, 0.7, 0.9999999):
        t32 = np.float32(nms_ops.float32_threshold(t))
        nudged = np.float32(builtin.builtin_threshold(t))
        assert nudged > t32 and np.nextafter(t32, np.float32(np.inf)) == nudged
        assert nudged <= 1.0  # a selected box (IoU 1 with itself) suppresses its own second visit


def test_kernel_model_reselects_what_cannot_suppress_itself():
    """The kernel puts a selected box back into its queue: a zero-area box (IoU 0 with itself) or a
    threshold above 1 selects the same box again.  The form must never hand it such a box."""
    zero_area = torch.tensor([[5.0, 5, 5, 5], [0, 0, 9, 9], [20, 20, 29, 29]])
    picked, count = builtin.nms_v5_eager(zero_area, torch.tensor([3.0, 2.0, 1.0]), 3, 0.5)
    assert picked.tolist() == [0, 0, 0] and int(count) == 3
    same = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 9]])
    picked, count = builtin.nms_v5_eager(same, torch.tensor([2.0, 1.0]), 2, 1.5)
    assert picked.tolist() == [0, 0]
    picked, count = builtin.nms_v5_eager(same, torch.tensor([2.0, 1.0]), 2, 0.5)
    assert picked.tolist() == [0, 0] and int(count) == 1  # one pick; the rest of the output is zeros


def test_tflite_table_uses_the_builtin_form_only_with_kernels():
    fixed = torch.ops.lightdeploy.nms_fixed.default
    assert lightdeploy.ops.tflite_decomposition_table(kernels=True)[fixed] is builtin.nms_fixed_builtin
    assert lightdeploy.ops.tflite_decomposition_table(kernels=False)[fixed] is nms_ops.nms_fixed_decomposition
    assert lightdeploy.ops.decomposition_table()[fixed] is nms_ops.nms_fixed_decomposition
    assert lightdeploy.ops.tflite_builtin_ops() == {
        torch.ops.lightdeploy.tflite_nms_v5.default: "tfl.non_max_suppression_v5"
    }


# --------------------------------------------------------------------------------------- TFLite
class KernelModule(torch.nn.Module):
    def __init__(self, threshold, max_output):
        super().__init__()
        self.threshold, self.max_output = threshold, max_output

    def forward(self, boxes, scores):
        picked, count = torch.ops.lightdeploy.tflite_nms_v5(boxes, scores, self.max_output, self.threshold)
        return {"picked": picked, "count": count}


def test_converted_kernel_op_is_the_builtin_and_matches_its_eager_model():
    """The lowering gives NON_MAX_SUPPRESSION_V5, and LiteRT's kernel answers as ``nms_v5_eager``
    (re-selection of a zero-area box included), so the eager tests above speak for the kernel."""
    Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

    from lightdeploy.exporters.tflite import builtins
    from lightdeploy.exporters.tflite.flatbuffer import list_ops

    boxes, _ = random_boxes(50, seed=4)
    scores = torch.randperm(50, generator=torch.Generator().manual_seed(5)).to(torch.float32)  # distinct
    model = convert_to_tflite(KernelModule(0.4, 12), {"boxes": boxes, "scores": scores})
    assert list_ops(model).get("NON_MAX_SUPPRESSION_V5") == 1
    runner = Interpreter(model_content=model).get_signature_runner()
    zero_area = boxes.clone()
    zero_area[int(scores.argmax()), 2:] = zero_area[int(scores.argmax()), :2]
    for b in (boxes, zero_area):
        out = runner(boxes=b.numpy(), scores=scores.numpy())
        picked, count = builtin.nms_v5_eager(b, scores, 12, 0.4)
        assert np.array_equal(out["picked"], picked.numpy()) and int(out["count"]) == int(count)
    assert torch.ops.lightdeploy.tflite_nms_v5.default not in _registered_lowerings()  # removed after
    with builtins.registered() as available:
        assert available and torch.ops.lightdeploy.tflite_nms_v5.default in _registered_lowerings()


def _registered_lowerings() -> dict:
    from litert_torch.backend.lowerings import registry

    return registry.global_registry.registered_ops


def test_tflite_nms_fixed_on_the_builtin_equals_eager():
    """The whole form converted (one NON_MAX_SUPPRESSION_V5, no unrolled picks) and run in LiteRT:
    ties, duplicates, zero-area boxes, a threshold above 1 and fewer boxes than output slots."""
    Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

    from lightdeploy.exporters.tflite.flatbuffer import list_ops

    n, max_output = 300, 40
    boxes, scores = random_boxes(n, seed=10)
    same = torch.tensor([[10.0, 10, 20, 20]]).repeat(n, 1)
    inputs = [
        (boxes, scores),
        (boxes, torch.full((n,), 0.5)),
        (torch.cat([boxes[:150], boxes[:150]]), scores.round(decimals=0)),
        (torch.where(torch.arange(n)[:, None] % 3 == 0, boxes[:, [0, 1, 0, 1]], boxes), scores),
        (same, scores),
    ]
    for threshold in (0.5, 1.0):
        model = convert_to_tflite(FixedNMSModule(threshold, max_output), {"boxes": boxes, "scores": scores})
        ops = list_ops(model)
        assert ops.get("NON_MAX_SUPPRESSION_V5") == (1 if threshold < 1 else None) and "ARG_MAX" not in ops
        runner = Interpreter(model_content=model).get_signature_runner()
        for b, s in inputs:
            out = runner(boxes=b.numpy(), scores=s.numpy())
            keep, num_kept = nms_ops.nms_fixed_eager(b, s, threshold, max_output)
            assert np.array_equal(out["keep"], keep.numpy()) and int(out["num_kept"]) == int(num_kept)
