"""Random weights in the ordered regime (``factory.RANDOM_BN_SHIFT``), and the gate's teeth on them.

Two claims are tested here, both by measurement on eager PyTorch:
1. The shift is what keeps rounding noise from growing through depth: one int8 step of noise on every
   conv output leaves the logits at cosine >= 0.98 with it, and drops them far below without it.
2. The fp16 row fails realistic export bugs on these weights (a BGR input, a channel shuffle left
   out, permuted conv inputs as OpenVINO's Gather fold produced, a dropped shortcut), so passing it
   means something; the int8 row fails most of them, and the ones it misses are strict xfails below.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
from conftest import registered
from torch import nn

import lightdeploy.factory as factory
from lightdeploy.models._detection import STANDARD_OUTPUTS
from lightdeploy.models.registry import get_spec
from lightdeploy.parity.gate import compare
from lightdeploy.parity.inputs import RANDOM_INPUTS, RANDOM_SEED
from lightdeploy.parity.tolerances import tolerance_for


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(factory, "_CALIBRATED", {})


def photos(spec, size) -> torch.Tensor:
    from lightdeploy.samples import photographs, preprocessed

    pre = {"size": list(size), "mean": spec.mean, "std": spec.std, "layout": "NCHW"}
    return torch.from_numpy(np.concatenate(list(preprocessed(photographs(), pre).values())))


@contextlib.contextmanager
def rounding(model, noise: str | None, under: str | None = None):
    """Perturb every conv and linear output (under module path ``under`` only, if given) as an
    artifact's rounding would: "int8" adds uniform noise of one per-tensor int8 step (max |activation|
    / 127), "fp16" rounds to float16, None leaves the model alone.  Seeded, so runs repeat."""

    def perturb(module, inputs, out):
        if noise == "fp16":
            return out.float().half().to(out.dtype)
        return out + (torch.rand_like(out) - 0.5) * out.abs().amax() / 127

    hooks = [
        m.register_forward_hook(perturb)
        for path, m in model.named_modules()
        if noise and isinstance(m, (nn.Conv2d, nn.Linear)) and (under is None or path.startswith(under + "."))
    ]
    torch.manual_seed(0)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def logits(model, x, noise: bool = False) -> torch.Tensor:
    """Logits (first output); with ``noise``, int8-step noise on every conv and linear output."""
    with rounding(model, "int8" if noise else None):
        out = model(x)
    return (out[0] if isinstance(out, (tuple, list)) else out).flatten(1).double()


def min_cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a, b).min().item()


# ---------------------------------------------------------------------------------- the shift
def test_every_default_bn_gets_the_shift_and_deliberate_ones_keep_theirs():
    model = factory.create_model("dfanet_b", input_size=(128, 128))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    attention = {id(b.conv[1]) for b in model.modules() if type(b).__name__ == "FCAttention"}
    assert len(attention) == 3
    for bn in bns:
        expected = 1.0 if id(bn) in attention else factory.RANDOM_BN_SHIFT
        assert torch.all(bn.bias == expected)
    raw = factory.create_model("dfanet_b", input_size=(128, 128), calibrate_bn=False)
    shifts = [bn.bias.unique().tolist() for bn in raw.modules() if isinstance(bn, nn.BatchNorm2d)]
    assert shifts.count([1.0]) == 3 and shifts.count([0.0]) == len(shifts) - 3  # untouched without calibration


def test_loaded_weights_are_not_shifted(tmp_path):
    from safetensors.torch import save_file

    state = factory.create_model("snet49", input_size=(64, 64), calibrate_bn=False).state_dict()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = factory.create_model("snet49", input_size=(64, 64), weights=path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("name", ["mobilenetv2_x0.35", "shufflenetv2_x0.5", "snet49"])
def test_the_shift_is_what_keeps_rounding_noise_small(name, monkeypatch):
    """Measured at 64x64 (factory.py lists more): with the shift >= 0.99, without it 0.67-0.85."""
    spec = get_spec(name)
    x = photos(spec, (64, 64))
    shifted = factory.create_model(name, input_size=(64, 64))
    assert min_cosine(logits(shifted, x, noise=True), logits(shifted, x)) >= 0.98
    monkeypatch.setattr(factory, "RANDOM_BN_SHIFT", 0.0)
    monkeypatch.setattr(factory, "_CALIBRATED", {})
    chaotic = factory.create_model(name, input_size=(64, 64))
    assert min_cosine(logits(chaotic, x, noise=True), logits(chaotic, x)) < 0.9


# ---------------------------------------------------------------------------- the gate's teeth
def _middle_shortcut_dropped(model):
    blocks = [b for b in model.modules() if getattr(b, "use_res_connect", False)]
    blocks[len(blocks) // 2].use_res_connect = False
    return model


def _middle_pointwise_conv_inputs_permuted(model):
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1]
    conv = convs[len(convs) // 2]
    perm = torch.randperm(conv.in_channels, generator=torch.Generator().manual_seed(0))
    conv.weight.data = conv.weight.data[:, perm]
    return model


class _NoShuffle:
    """Channel shuffle left out of every unit (the op lost on the way to the artifact)."""

    def __enter__(self):
        import lightdeploy.models.shufflenetv2 as a
        import lightdeploy.models.snet as b

        self.saved = [(m, m.channel_shuffle) for m in (a, b)]
        for m, _ in self.saved:
            m.channel_shuffle = lambda x, groups: x

    def __exit__(self, *exc):
        for m, fn in self.saved:
            m.channel_shuffle = fn


MUTATIONS = {
    "bgr_input": lambda model, x: logits(model, x.flip(1)),
    "pointwise_inputs_permuted": lambda model, x: logits(
        _middle_pointwise_conv_inputs_permuted(copy.deepcopy(model)), x
    ),
    "shortcut_dropped": lambda model, x: logits(_middle_shortcut_dropped(copy.deepcopy(model)), x),
}


def _shuffle_off(model, x):
    with _NoShuffle():
        return logits(model, x)


CASES = [("mobilenetv2", m) for m in MUTATIONS] + [
    (name, mutation)
    for name in ("shufflenetv2", "snet49")
    for mutation in ("bgr_input", "pointwise_inputs_permuted", "shuffle_off")
]
# Bugs the int8 row does not see on random weights (measured at 224x224: worst-input cosine, as the
# gate takes it; top-1 is judged on clear-margin inputs only, and random logits have 0-2 of 6).
# Random logits share a large input-independent part, so a different photograph is itself at cosine
# 0.97-0.98; an honest int8 artifact is at 0.998-0.999.  The fp16 row catches every one of these.
INT8_BLIND = {
    ("mobilenetv2", "pointwise_inputs_permuted"): "cosine 0.9926, 2 judged inputs",
    ("snet49", "bgr_input"): "cosine 0.9858, no judged input",
    ("snet49", "pointwise_inputs_permuted"): "cosine 0.9891, no judged input",
}


def _teeth_params():
    for name, mutation in CASES:
        for precision in ("fp16", "int8"):
            why = INT8_BLIND.get((name, mutation)) if precision == "int8" else None
            marks = [pytest.mark.xfail(strict=True, reason=f"int8 row blind on random weights: {why}")] if why else []
            yield pytest.param(name, mutation, precision, marks=marks, id=f"{name}-{mutation}-{precision}")


@pytest.mark.parametrize("name,mutation,precision", list(_teeth_params()))
def test_reduced_precision_rows_fail_broken_exports(name, mutation, precision):
    """At the size int8 is judged at (224x224), each bug fails the row: the cosine, the top-1, or both."""
    assert name in registered()
    spec = get_spec(name)
    model = factory.create_model(name)
    x = photos(spec, spec.input_size)
    ref = logits(model, x)
    broken = _shuffle_off(model, x) if mutation == "shuffle_off" else MUTATIONS[mutation](model, x)
    manifest = {"task": "classify", "model": name, "backend": "openvino", "precision": precision}

    def per_input(t):  # as the gate holds them: one array per input
        return [row[None] for row in t.numpy()]

    report = compare(
        {"logits": per_input(ref)},
        {"logits": per_input(broken)},
        manifest,
        tolerance_for("openvino", precision),
        [f"photo{i}" for i in range(len(x))],
    )
    assert not report.passed, report.summary()


# ------------------------------------------------------------------ detectors: int8 rounding alone
@torch.no_grad()
def detections(model, inputs, noise: str | None = None, under: str | None = None) -> dict:
    """Eager detections per input, with ``rounding(model, noise, under)``: what an artifact's
    rounding does to them, without any export."""
    out = {k: [] for k in STANDARD_OUTPUTS}
    with rounding(model, noise, under):
        for x in inputs:
            for key, value in zip(STANDARD_OUTPUTS, model(x)):
                out[key].append(value.numpy())
    return out


def test_int8_rounding_alone_fails_a_random_detectors_box_f1():
    """Why the detectors' int8 rows are expected failures on every backend (test_openvino,
    test_tensorrt, test_tflite): on random weights, int8 rounding *in eager PyTorch*, with no export
    at all, already drops ThunderNet's box match F1 below the int8 row, while fp16 rounding passes
    the fp16 row, so the metric itself is sound.

    Measured at ThunderNet's own 320x320 on the parity inputs (6 photographs + 4 random tensors),
    F1 with int8 noise on every layer / on the backbone only / fp16 rounding: snet49 0.677 / 0.705 /
    0.991 (its OpenVINO int8 artifact 0.668, its TensorRT QDQ estimate 0.653).  A random detector
    ranks ~10^4 anchors by a random objectness whose neighbouring top scores are ~4e-4 apart against
    ~1e-2 of int8 noise (rpn logits cosine 0.996-0.998 on photographs), so proposals re-rank and
    NMS keeps different boxes (20-30% of proposals move); a trained RPN and box head pull
    neighbouring anchors onto the same object, which is what makes trained detectors robust to int8.
    """
    from lightdeploy.parity.detection import detect_checks

    name, size = "thundernet_snet49", (320, 320)
    spec = get_spec(name)
    model = factory.create_model(name, input_size=size).double()
    rng = np.random.default_rng(RANDOM_SEED)  # as the gate's parity inputs: photographs + N(0, 1) tensors
    inputs = [x[None] for x in photos(spec, size).double()]
    inputs += [torch.from_numpy(rng.standard_normal(inputs[0].shape)) for _ in range(RANDOM_INPUTS)]
    ref = detections(model, inputs)

    def f1(precision, **noise):
        checks, _ = detect_checks(
            ref, detections(model, inputs, **noise), tolerance_for("openvino", precision), list(STANDARD_OUTPUTS)
        )
        return checks[0]

    assert f1("fp16", noise="fp16").passed
    for under in (None, "backbone"):
        check = f1("int8", noise="int8", under=under)
        assert check.metric == "box_match_f1" and not check.passed, check
