"""Channel shuffle: eager op, its permutation, and both ONNX forms against eager in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lightdeploy.ops import _channel_shuffle as cs
from lightdeploy.ops import onnx_translation_table


class Shuffle(torch.nn.Module):
    def forward(self, x):
        return cs.channel_shuffle(x, 2) + 1


def test_eager_matches_interleaving():
    x = torch.arange(8.0).reshape(1, 8, 1, 1)
    y = cs.channel_shuffle(x, 2).flatten().tolist()
    assert y == [0, 4, 1, 5, 2, 6, 3, 7]
    assert np.array_equal(cs.shuffle_permutation(8, 2), [0, 4, 1, 5, 2, 6, 3, 7])


def test_channel_last_form_equals_reference_and_is_the_tflite_form():
    from lightdeploy.ops import tflite_decomposition_table

    for shape, groups in [((2, 12, 6, 5), 2), ((1, 24, 3, 3), 3), ((1, 8, 1, 1), 8)]:
        x = torch.randn(*shape)
        assert torch.equal(cs.channel_shuffle_channel_last(x, groups), cs.channel_shuffle_reference(x, groups))
    op = torch.ops.lightdeploy.channel_shuffle.default
    assert tflite_decomposition_table(kernels=False)[op] is cs.channel_shuffle_channel_last


@pytest.mark.parametrize("variant", sorted(cs.ONNX_VARIANTS))
def test_onnx_forms_match_eager(tmp_path, variant):
    table = {**onnx_translation_table(), torch.ops.lightdeploy.channel_shuffle.default: cs.ONNX_VARIANTS[variant]}
    x = torch.randn(2, 12, 6, 6)  # 12 channels, H = W = 6 = split size: the case onnx2tf got wrong
    program = torch.onnx.export(
        Shuffle(),
        (x,),
        dynamo=True,
        custom_translation_table=table,
        input_names=["x"],
        output_names=["y"],
        dynamic_shapes=({0: "batch"},),
    )
    path = tmp_path / "m.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (2, 3):
        xb = torch.randn(batch, 12, 6, 6)
        got = session.run(None, {"x": xb.numpy()})[0]
        np.testing.assert_array_equal(got, Shuffle()(xb).numpy())
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    if variant == "gather":
        assert "Gather" in ops and "Transpose" not in ops  # no 5-D tensor anywhere
