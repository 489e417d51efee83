"""lightdeploy::nms and ::nms_fixed: eager vs a loop reference, ONNX NonMaxSuppression in
onnxruntime vs eager (exact index equality, order included), fixed-size decomposition vs greedy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lightdeploy.ops
from lightdeploy.ops import _nms as nms_ops


# ------------------------------------------------------------------------ slow, obvious reference
def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """torchvision's greedy loop: float32 IoU, compared with the threshold in double precision."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    b = boxes.to(torch.float32)
    kept, suppressed = [], set()
    for position, i in enumerate(order):
        if i in suppressed:
            continue
        kept.append(i)
        area_i = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
        for j in order[position + 1 :]:
            w = (torch.minimum(b[i, 2], b[j, 2]) - torch.maximum(b[i, 0], b[j, 0])).clamp(min=0)
            h = (torch.minimum(b[i, 3], b[j, 3]) - torch.maximum(b[i, 1], b[j, 1])).clamp(min=0)
            inter = w * h
            area_j = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
            iou = inter / (area_i + area_j - inter)  # float32 tensor
            if float(iou) > iou_threshold:  # Python float: double comparison
                suppressed.add(j)
    return kept


def reference_batched_nms(boxes, scores, idxs, iou_threshold) -> list[int]:
    """Per class, then all kept boxes by decreasing score (ties: lower index first)."""
    kept = []
    for c in idxs.unique().tolist():
        members = torch.nonzero(idxs == c).flatten()
        kept += [int(members[k]) for k in reference_nms(boxes[members], scores[members], iou_threshold)]
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def random_boxes(n: int, seed: int, tie_decimals: int = 1):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    scores = torch.rand(n, generator=g).round(decimals=tie_decimals)  # many equal scores
    return torch.cat([xy, xy + wh], dim=1), scores


# IoU of two boxes [0,0,2,1] and [1,0,3,1] is 1/3: float32 0.33333334 > 1/3 (double) -> suppressed;
# a threshold rounded to nearest float32 would keep it.  IoU 0.5 is exact: not suppressed at 0.5.
AT_THRESHOLD = [
    (torch.tensor([[0.0, 0, 2, 1], [1, 0, 3, 1]]), torch.tensor([0.9, 0.8]), 1 / 3, [0]),
    (torch.tensor([[0.0, 0, 3, 1], [1, 0, 4, 1]]), torch.tensor([0.9, 0.8]), 0.5, [0, 1]),
    (torch.tensor([[0.0, 0, 3, 1], [1, 0, 4, 1]]), torch.tensor([0.9, 0.8]), 0.4999, [0]),
]


def special_cases():
    """(name, boxes, scores, threshold) for ties, all-suppressed, empty, at-threshold."""
    boxes, scores = random_boxes(60, seed=1)
    same = torch.tensor([[10.0, 10, 20, 20]]).repeat(5, 1)
    yield "random_ties", boxes, scores, 0.5
    yield "random_ties_low_threshold", boxes, scores, 0.1
    yield "all_equal_scores", boxes, torch.full((60,), 0.5), 0.3
    yield "all_suppressed", same, torch.tensor([0.2, 0.9, 0.9, 0.1, 0.5]), 0.5
    yield (
        "zero_area_boxes",
        torch.tensor([[5.0, 5, 5, 5], [5, 5, 5, 5], [0, 0, 9, 9]]),
        torch.tensor([0.9, 0.8, 0.7]),
        0.0,
    )
    yield "empty", torch.zeros(0, 4), torch.zeros(0), 0.5
    yield "duplicates_tied", same.repeat(2, 1), torch.tensor([0.5, 0.5, 0.9, 0.5, 0.9] * 2), 0.5
    yield "no_suppression", boxes, scores, 1.0  # IoU <= 1: each box is removed only by being picked
    for k, (b, s, t, _) in enumerate(AT_THRESHOLD):
        yield f"at_threshold_{k}", b, s, t


CASES = list(special_cases())
IDS = [c[0] for c in CASES]


# -------------------------------------------------------------------------------------- eager
@pytest.mark.parametrize("name, boxes, scores, threshold", CASES, ids=IDS)
def test_eager_matches_reference(name, boxes, scores, threshold):
    kept = nms_ops.nms(boxes, scores, threshold)
    assert kept.dtype == torch.int64
    assert kept.tolist() == reference_nms(boxes, scores, threshold)


@pytest.mark.parametrize("boxes, scores, threshold, expected", AT_THRESHOLD)
def test_iou_exactly_at_threshold(boxes, scores, threshold, expected):
    assert nms_ops.nms(boxes, scores, threshold).tolist() == expected


def test_all_suppressed_keeps_first_best_score():
    same = torch.tensor([[10.0, 10, 20, 20]]).repeat(5, 1)
    assert nms_ops.nms(same, torch.tensor([0.2, 0.9, 0.9, 0.1, 0.5]), 0.5).tolist() == [1]


def test_batched_nms_matches_per_class_reference():
    boxes, scores = random_boxes(80, seed=2)
    boxes = boxes.round()  # integer coordinates: the class offset adds no rounding
    idxs = torch.randint(0, 4, (80,), generator=torch.Generator().manual_seed(3))
    kept = nms_ops.batched_nms(boxes, scores, idxs, 0.4)
    assert kept.tolist() == reference_batched_nms(boxes, scores, idxs, 0.4)
    assert nms_ops.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.4).numel() == 0


@pytest.mark.parametrize("name, boxes, scores, threshold", CASES, ids=IDS)
@pytest.mark.parametrize("max_output", [1, 7, 100])
def test_fixed_size_forms_equal_greedy(name, boxes, scores, threshold, max_output):
    greedy = reference_nms(boxes, scores, threshold)[:max_output]
    expected = torch.tensor(greedy + [-1] * (max_output - len(greedy)), dtype=torch.int64)
    for form in (nms_ops.nms_fixed, nms_ops.nms_fixed_decomposition):
        keep, num_kept = form(boxes, scores, threshold, max_output)
        assert torch.equal(keep, expected), form.__name__
        assert int(num_kept) == len(greedy) and num_kept.shape == ()


@pytest.mark.parametrize("seed", range(8))
def test_decomposition_equals_greedy_on_random_sets(seed):
    """The decomposition stops after max_output picks: cut before, at and after the kept count, with
    ties and zero-area boxes among the inputs."""
    n = 40 + 30 * seed
    boxes, scores = random_boxes(n, seed=100 + seed)
    boxes[::7, 2:] = boxes[::7, :2]  # zero-area boxes: IoU 0 / 0 with anything, never suppress
    threshold = 0.2 + 0.08 * seed
    greedy = reference_nms(boxes, scores, threshold)
    for max_output in (1, len(greedy) - 1, len(greedy), len(greedy) + 5):
        keep, num_kept = nms_ops.nms_fixed_decomposition(boxes, scores, threshold, max_output)
        cut = greedy[:max_output]
        assert keep.tolist() == cut + [-1] * (max_output - len(cut)) and int(num_kept) == len(cut)


def ties_reversed_topk(values, k):
    """torch.topk, but equal values come out highest index first: another backend's tie order."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), -i))[:k]
    index = torch.tensor(order, dtype=torch.int64)
    return torch.return_types.topk((values[index], index))


@pytest.mark.parametrize("tie_order", ["torch", "reversed"])
def test_stable_descending_order_matches_stable_sort(tie_order, monkeypatch):
    """Equal scores come out in index order whichever way top-k breaks ties."""
    if tie_order == "reversed":
        monkeypatch.setattr(torch, "topk", ties_reversed_topk)
    g = torch.Generator().manual_seed(8)
    cases = [
        torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9, 0.5]),
        torch.tensor([0.0, -0.0, 1.0, -0.0, 0.0]),  # signed zeros are equal scores
        torch.full((7,), 0.25),
        torch.tensor([3.0]),
        torch.rand(500, generator=g).round(decimals=1),
        torch.tensor([float("-inf"), 1.0, float("-inf"), float("inf"), 1.0]),
    ]
    for scores in cases:
        expected = torch.sort(scores, descending=True, stable=True).indices
        assert torch.equal(nms_ops.stable_descending_order(scores), expected), scores


def test_decomposition_equals_greedy_at_detector_size():
    """ThunderNet's proposal NMS: 2000 boxes with tied scores and duplicate boxes, 200 kept."""
    boxes, scores = random_boxes(2000, seed=9, tie_decimals=2)
    boxes = boxes * 3
    boxes[1000:1300] = boxes[:300]  # duplicates: IoU 1 with their twin
    boxes[::13, 2:] = boxes[::13, :2]  # zero-area
    for threshold, max_output in [(0.7, 200), (0.5, 100), (0.95, 2000)]:
        expected = nms_ops.nms_fixed_eager(boxes, scores, threshold, max_output)
        got = nms_ops.nms_fixed_decomposition(boxes, scores, threshold, max_output)
        assert torch.equal(got[0], expected[0]) and int(got[1]) == int(expected[1])


def test_user_errors_raise_value_error():
    boxes, scores = random_boxes(4, seed=0)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        nms_ops.nms(boxes[:, :3], scores, 0.5)
    with pytest.raises(ValueError, match=r"scores must be \[N\]"):
        nms_ops.nms(boxes, scores[:3], 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        nms_ops.nms(boxes, scores, -0.1)
    with pytest.raises(ValueError, match="max_output"):
        nms_ops.nms_fixed(boxes, scores, 0.5, 0)


# --------------------------------------------------------------------------------------- ONNX
class NMS(torch.nn.Module):
    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def forward(self, boxes, scores):
        return nms_ops.nms(boxes, scores, self.threshold)


class FixedNMS(NMS):
    def forward(self, boxes, scores):
        return nms_ops.nms_fixed(boxes, scores, self.threshold, 10)


class BatchedNMS(NMS):
    def forward(self, boxes, scores, idxs):
        return nms_ops.batched_nms(boxes, scores, idxs, self.threshold)


def export(module, args, path):
    n = torch.export.Dim("N", min=0)
    names = ["boxes", "scores", "idxs"][: len(args)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            custom_translation_table=lightdeploy.ops.onnx_translation_table(),
            opset_version=18,
            input_names=names,
            external_data=False,
            verbose=False,
            dynamic_shapes={name: {0: n} for name in ["boxes", "scores", "idxs"][: len(args)]},
        )
    program.save(str(path))
    return names


def run_all_sizes(module, args, tmp_path, sizes):
    ort = pytest.importorskip("onnxruntime")
    names = export(module, args, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for n in sizes:
        sliced = [a[:n] for a in args]
        outputs = session.run(None, dict(zip(names, (a.numpy() for a in sliced))))
        expected = module(*sliced)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for got, want in zip(outputs, expected):
            assert got.dtype == np.int64 and np.array_equal(got, want.numpy()), (n, got, want)


@pytest.mark.parametrize("threshold", [0.5, 1 / 3, 1.5])
def test_onnx_nms_equals_eager_in_onnxruntime(threshold, tmp_path):
    boxes, scores = random_boxes(60, seed=4)
    # Append the exact-threshold pair (IoU 1/3 as float32) so rounding of the threshold is tested.
    boxes = torch.cat([boxes, torch.tensor([[0.0, 0, 2, 1], [1, 0, 3, 1]])])
    scores = torch.cat([scores, torch.tensor([0.95, 0.94])])
    run_all_sizes(NMS(threshold), (boxes.flip(0), scores.flip(0)), tmp_path, [62, 25, 0])


def test_onnx_nms_fixed_and_batched_equal_eager(tmp_path):
    boxes, scores = random_boxes(60, seed=5)
    run_all_sizes(FixedNMS(0.5), (boxes, scores), tmp_path, [60, 6, 0])
    idxs = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(6))
    run_all_sizes(BatchedNMS(0.5), (boxes, scores, idxs), tmp_path, [60, 17, 0])


def test_onnx_nms_ties_order(tmp_path):
    # Equal scores everywhere: the order is the index order in eager and must be in ORT too.
    boxes, _ = random_boxes(40, seed=7)
    run_all_sizes(NMS(0.3), (boxes, torch.full((40,), 0.25)), tmp_path, [40])


def test_tables():
    table = lightdeploy.ops.onnx_translation_table()
    assert table[torch.ops.lightdeploy.nms.default] is nms_ops.onnx_nms
    assert table[torch.ops.lightdeploy.nms_fixed.default] is nms_ops.onnx_nms_fixed
    decompositions = lightdeploy.ops.decomposition_table()
    fixed = torch.ops.lightdeploy.nms_fixed.default
    assert decompositions[fixed] is nms_ops.nms_fixed_decomposition
    assert torch.ops.lightdeploy.nms.default not in decompositions


# --------------------------------------------------------------------------------------- TFLite
class FixedNMSModule(torch.nn.Module):
    def __init__(self, threshold, max_output):
        super().__init__()
        self.threshold, self.max_output = threshold, max_output

    def forward(self, boxes, scores):
        keep, num_kept = nms_ops.nms_fixed(boxes, scores, self.threshold, self.max_output)
        return {"keep": keep, "num_kept": num_kept}


def convert_to_tflite(module, args: dict) -> bytes:
    """``module`` converted by litert-torch with the exporter's decompositions (and builtin lowerings)."""
    litert_torch = pytest.importorskip("litert_torch")
    from lightdeploy.exporters.tflite.convert import _decompositions

    with _decompositions(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(litert_torch.convert(module.eval(), (), args).model_content())


@pytest.mark.slow
def test_tflite_nms_fixed_equals_eager(monkeypatch):
    """The plain decomposition (what the exporter uses when litert-torch offers no builtin lowering,
    ``exporters/tflite/builtins.py``) converted and run in LiteRT (TOPK_V2's own tie order): ties,
    duplicates, zero-area boxes and fewer boxes left than output slots."""
    import contextlib

    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    from lightdeploy.exporters.tflite import builtins
    from lightdeploy.exporters.tflite.flatbuffer import list_ops

    monkeypatch.setattr(builtins, "registered", lambda: contextlib.nullcontext(False))

    n, max_output = 300, 40
    boxes, scores = random_boxes(n, seed=10)
    model = convert_to_tflite(FixedNMSModule(0.5, max_output), {"boxes": boxes, "scores": scores})
    assert "NON_MAX_SUPPRESSION_V5" not in list_ops(model)
    runner = interpreter.Interpreter(model_content=model).get_signature_runner()
    same = torch.tensor([[10.0, 10, 20, 20]]).repeat(n, 1)
    inputs = [
        (boxes, scores),
        (boxes, torch.full((n,), 0.5)),
        (torch.cat([boxes[:150], boxes[:150]]), scores.round(decimals=0)),  # duplicates, two scores
        (torch.where(torch.arange(n)[:, None] % 3 == 0, boxes[:, [0, 1, 0, 1]], boxes), scores),  # zero-area
        (same, scores),  # one box survives: 39 padding slots
    ]
    for b, s in inputs:
        out = runner(boxes=b.numpy(), scores=s.numpy())
        keep, num_kept = nms_ops.nms_fixed_eager(b, s, 0.5, max_output)
        assert np.array_equal(out["keep"], keep.numpy()) and int(out["num_kept"]) == int(num_kept)
