"""Folding channel permutations into convolutions (``exporters/onnx/permutations.py``): the folded graph
computes what the exported one does, in ONNX Runtime, on hand-made graphs for each rule and on every
registered classifier; and the tensors it removes are rebuilt exactly for fault localisation."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import family_marks, registered, small_size
from onnx import TensorProto, helper, numpy_helper

from lightdeploy.exporters.onnx.graph import graph_constants
from lightdeploy.exporters.onnx.permutations import fold_channel_permutations, removed_tensors
from lightdeploy.models.registry import get_spec
from lightdeploy.ops._channel_shuffle import shuffle_permutation

RNG = np.random.default_rng(0)


def run(model, x: np.ndarray, extra: list[str] = ()) -> dict[str, np.ndarray]:
    model = copy.deepcopy(model)
    for name in extra:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the order of float sums (a folded convolution adds its inputs in another order)."""
    return a.shape == b.shape and float(np.abs(a - b).max()) <= 1e-5 * max(1.0, float(np.abs(a).max()))


def graph(nodes, channels: int, out_channels: int, inits: dict[str, np.ndarray]):
    """A model with input x [1, channels, 5, 5] and output y [1, out_channels, 5, 5]."""
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 5, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def weights(cout: int, cin: int, k: int = 1) -> np.ndarray:
    return RNG.standard_normal((cout, cin, k, k)).astype(np.float32)


def fold_and_compare(model) -> tuple[dict, list[str]]:
    """Fold a copy of ``model``; check its outputs against the original's; return the counts and the
    folded graph's op types."""
    x = RNG.standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    folded = copy.deepcopy(model)
    counts = fold_channel_permutations(folded)
    onnx.checker.check_model(folded, full_check=True)
    want, got = run(model, x), run(folded, x)
    assert want.keys() == got.keys() and all(close(want[k], got[k]) for k in want)
    return counts, [n.op_type for n in folded.graph.node]


# ----------------------------------------------------------------------------------- one rule each
def test_a_permutation_before_a_convolution_goes_into_its_weights():
    perm = shuffle_permutation(8, 2)
    nodes = [
        helper.make_node("Gather", ["x", "perm"], ["s"], axis=1),
        helper.make_node("Conv", ["s", "w"], ["y"]),
    ]
    counts, ops = fold_and_compare(graph(nodes, 8, 4, {"perm": perm, "w": weights(4, 8)}))
    assert ops == ["Conv"] and counts["gathers_removed"] == 1 and counts["convs_folded"] == 1


def test_repeated_channels_add_their_weight_columns():
    nodes = [
        helper.make_node("Gather", ["x", "idx"], ["s"], axis=1),
        helper.make_node("Conv", ["s", "w"], ["y"]),
    ]
    idx = np.array([3, 1, 3, 0, 1, 2], np.int64)  # channel 3 and 1 twice
    counts, ops = fold_and_compare(graph(nodes, 4, 2, {"idx": idx, "w": weights(2, 6)}))
    assert ops == ["Conv"] and counts["convs_folded"] == 1


def test_a_depthwise_convolution_and_relu_carry_the_permutation_to_the_next_convolution():
    perm = shuffle_permutation(6, 3)
    nodes = [
        helper.make_node("Gather", ["x", "perm"], ["s"], axis=-3),
        helper.make_node("Conv", ["s", "dw", "b"], ["d"], group=6, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["y"]),
    ]
    inits = {"perm": perm, "dw": weights(6, 1, 3), "b": RNG.standard_normal(6).astype(np.float32), "w": weights(3, 6)}
    counts, ops = fold_and_compare(graph(nodes, 6, 3, inits))
    assert ops == ["Conv", "Relu", "Conv"] and counts["gathers_removed"] == 1


def test_a_shufflenet_unit_reads_slices_of_the_branches_instead_of_a_shuffle():
    """Two ShuffleNetV2 units (split, branch, concat, shuffle) and a last 1x1 convolution."""
    c = 8
    perm = shuffle_permutation(c, 2)
    nodes, inits = [], {"perm": perm, "half": np.array([c // 2, c // 2], np.int64), "head": weights(3, c)}
    x = "x"
    for u in range(2):
        inits[f"w{u}"] = weights(c // 2, c // 2)
        nodes += [
            helper.make_node("Split", [x, "half"], [f"l{u}", f"r{u}"], axis=1),
            helper.make_node("Conv", [f"r{u}", f"w{u}"], [f"c{u}"]),
            helper.make_node("Relu", [f"c{u}"], [f"b{u}"]),
            helper.make_node("Concat", [f"l{u}", f"b{u}"], [f"cat{u}"], axis=1),
            helper.make_node("Gather", [f"cat{u}", "perm"], [f"x{u + 1}"], axis=1),
        ]
        x = f"x{u + 1}"
    nodes.append(helper.make_node("Conv", [x, "head"], ["y"]))
    counts, ops = fold_and_compare(graph(nodes, c, 3, inits))
    assert "Gather" not in ops and counts["gathers_removed"] == 2
    assert ops.count("Conv") == 3 and ops.count("Split") >= 1


def test_a_spatial_mean_carries_the_permutation_to_a_gemm():
    """SNet146/535's head: the last shuffle, a global mean without kept dims, the classifier's Gemm."""
    perm = shuffle_permutation(8, 2)
    nodes = [
        helper.make_node("Gather", ["x", "perm"], ["s"], axis=1),
        helper.make_node("ReduceMean", ["s", "axes"], ["m"], keepdims=0),
        helper.make_node("Gemm", ["m", "w", "b"], ["y"], transB=1),
    ]
    inits = {
        "perm": perm,
        "axes": np.array([2, 3], np.int64),
        "w": weights(3, 8)[:, :, 0, 0],
        "b": np.ones(3, np.float32),
    }
    model = graph(nodes, 8, 3, inits)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]))
    counts, ops = fold_and_compare(model)
    assert ops == ["ReduceMean", "Gemm"] and counts["convs_folded"] == 1


@pytest.mark.parametrize("consumer", ["Add", "output"])
def test_a_consumer_that_needs_the_order_gets_it_exactly(consumer):
    perm = shuffle_permutation(8, 4)
    nodes = [helper.make_node("Gather", ["x", "perm"], ["y" if consumer == "output" else "s"], axis=1)]
    if consumer == "Add":
        nodes.append(helper.make_node("Add", ["s", "x"], ["y"]))
    counts, ops = fold_and_compare(graph(nodes, 8, 8, {"perm": perm}))
    assert ops.count("Gather") == 1 and counts["gathers_removed"] == 0


def test_a_graph_without_channel_gathers_is_left_alone():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    model = graph(nodes, 4, 2, {"w": weights(2, 4)})
    folded = copy.deepcopy(model)
    assert fold_channel_permutations(folded)["gathers_removed"] == 0
    assert folded == model


def test_constants_read_only_inside_a_subgraph_are_kept():
    """The fold drops the constants nothing reads any more; one read inside an If branch is still read."""
    perm = shuffle_permutation(4, 2)
    branch = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["b"])],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    nodes = [
        helper.make_node("Gather", ["x", "perm"], ["s"], axis=1),
        helper.make_node("Conv", ["s", "w"], ["y"]),
        helper.make_node("If", ["flag"], ["z"], then_branch=branch, else_branch=branch),
    ]
    inits = {"perm": perm, "w": weights(2, 4), "c": np.array([1.0, 2.0], np.float32), "flag": np.array(True)}
    model = graph(nodes, 4, 2, inits)
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2]))
    counts, ops = fold_and_compare(model)
    assert ops == ["Conv", "If"] and counts["gathers_removed"] == 1


def test_removed_tensors_are_rebuilt_from_the_folded_graph():
    """What localisation does: every tensor the fold removed, gathered from the folded graph's own."""
    c = 8
    perm = shuffle_permutation(c, 2)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"]),
        helper.make_node("Gather", ["a", "perm"], ["s"], axis=1),
        helper.make_node("Conv", ["s", "dw"], ["d"], group=c),
        helper.make_node("Gather", ["d", "perm"], ["t"], axis=1),
        helper.make_node("Conv", ["t", "w1"], ["y"]),
    ]
    model = graph(nodes, c, 2, {"w0": weights(c, c), "perm": perm, "dw": weights(c, 1), "w1": weights(2, c)})
    views = removed_tensors(model)
    assert set(views) == {"s", "t", "d"}  # d: the depthwise output, now in another channel order
    folded = copy.deepcopy(model)
    fold_channel_permutations(folded)
    x = RNG.standard_normal((1, c, 5, 5)).astype(np.float32)
    want = run(model, x, extra=sorted(views))
    sources = sorted({src for view in views.values() for src, _ in view} - {"y"})
    got = run(folded, x, extra=sources)
    for name, view in views.items():
        rebuilt = np.stack([got[src][:, ch] for src, ch in view], axis=1)
        assert close(want[name], rebuilt), name


# ------------------------------------------------------------------------ every registered classifier
@pytest.mark.parametrize("name", [pytest.param(n, marks=family_marks(n)) for n in registered("classify")])
def test_folded_classifier_computes_what_the_export_does(name, tmp_path, cat_image):
    from lightdeploy.pipeline import export

    size = small_size(get_spec(name))
    folder = export(name, "onnx", input_size=size, out=tmp_path, parity=False).folder
    model = onnx.load(str(folder / "model.onnx"))
    consts = graph_constants(model.graph)
    shuffles = sum(n.op_type == "Gather" and n.input[1] in consts for n in model.graph.node)
    folded = copy.deepcopy(model)
    counts = fold_channel_permutations(folded)
    assert counts["gathers_removed"] == shuffles and counts["exact_gathers"] == 0
    assert not any(n.op_type == "Gather" for n in folded.graph.node)
    photo = cat_image[: size[0], : size[1]].astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    for x in (photo, RNG.standard_normal(photo.shape).astype(np.float32)):
        want, got = run(model, x), run(folded, x)
        assert all(close(want[k], got[k]) for k in want), name
