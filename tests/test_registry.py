"""The registry and the zoo: names, errors, forward shapes and fidelity to docs/models.md, for every model."""

from __future__ import annotations

import pytest
import torch
from conftest import registered, small_size

import lightdeploy
from lightdeploy.complexity import count_macs, count_params
from lightdeploy.errors import UsageError
from lightdeploy.models.registry import ModelSpec, get_spec, list_models, register_model

DESIGN_NAMES = [  # the founding design's model names (docs/design.md)
    "mobilenetv2",
    "mobilenetv2_x0.35",
    "mobilenetv2_x0.5",
    "mobilenetv2_x0.75",
    "mobilenetv2_x1.4",
    "shufflenetv2",
    "shufflenetv2_x0.5",
    "shufflenetv2_x1.5",
    "shufflenetv2_x2.0",
    "snet49",
    "snet146",
    "snet535",
]


def test_design_names_are_registered():
    names = set(lightdeploy.list_models())
    assert set(DESIGN_NAMES) <= names


def test_unknown_name_suggests_closest():
    with pytest.raises(UsageError) as exc:
        lightdeploy.create_model("mobilenet_v2")
    assert "'mobilenetv2'" in str(exc.value) and "Did you mean" in str(exc.value)


def test_registering_again_with_the_same_builder_is_harmless(monkeypatch):
    """A notebook re-runs the cell that defines and registers a builder: same name, a new function
    object with the same module and qualified name.  It replaces the spec; a different builder under a
    taken name is refused."""
    from lightdeploy.models import registry

    list_models()  # the zoo is loaded; the test's names go into a copy that is dropped afterwards
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def define_and_register(stride):
        def tiny_builder(num_classes=3):  # defined anew on every call, like a re-run cell
            return torch.nn.Linear(4, num_classes)

        spec = ModelSpec("test_rerun_cell", "test", "classify", tiny_builder, (32, 32), stride, 3, ("logits",))
        return register_model(spec)

    first = define_and_register(stride=32)
    second = define_and_register(stride=16)
    assert first.builder is not second.builder and get_spec("test_rerun_cell").stride == 16
    snet = get_spec("snet49")
    with pytest.raises(ValueError, match="registered twice.*snet"):
        register_model(ModelSpec(**{**snet.__dict__, "name": "test_rerun_cell"}))
    assert get_spec("test_rerun_cell").stride == 16
    register_model(ModelSpec(**snet.__dict__))  # the zoo's own builder again: harmless too
    assert get_spec("snet49") == snet


def test_input_size_must_be_multiple_of_stride():
    with pytest.raises(UsageError, match="multiples of its stride 32.*--input-size 224 224"):
        lightdeploy.create_model("mobilenetv2", input_size=(225, 224))


def test_same_seed_gives_same_model():
    x = torch.randn(1, 3, 64, 64)
    a = lightdeploy.create_model("snet49", input_size=(64, 64))
    b = lightdeploy.create_model("snet49", input_size=(64, 64))
    assert torch.equal(a(x), b(x))
    c = lightdeploy.create_model("snet49", input_size=(64, 64), seed=1)
    assert not torch.equal(a(x), c(x))


def test_bn_statistics_are_reestimated():
    model = lightdeploy.create_model("mobilenetv2_x0.35", input_size=(64, 64))
    bn = model.features[0][1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not model.training


@pytest.mark.parametrize("name", registered())
def test_forward_shapes(name):
    spec = get_spec(name)
    model = lightdeploy.create_model(name, input_size=small_size(spec), calibrate_bn=False)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *small_size(spec)))
    out = out if isinstance(out, tuple) else (out,)
    assert len(out) == len(spec.outputs)
    if spec.task == "classify":
        assert out[0].shape == (1, spec.num_classes)


@pytest.mark.parametrize("name", [n for n in registered() if get_spec(n).reference is not None])
def test_params_and_macs_match_models_md(name):
    """Within 3% of the computed [C] values of docs/models.md (counted on the meta device)."""
    spec = get_spec(name)
    ref = spec.reference
    with torch.device("meta"):
        from lightdeploy.factory import build

        model = build(spec, spec.num_classes, ref.at).eval()
        macs, params = count_macs(model, ref.at), count_params(model)
    if ref.macs:
        assert abs(macs / ref.macs - 1) <= ref.rel_tol, (
            f"MACs {macs / 1e6:.1f}M vs {ref.macs / 1e6:.1f}M ({ref.source})"
        )
    if ref.params:
        assert abs(params / ref.params - 1) <= ref.rel_tol, f"params {params} vs {ref.params} ({ref.source})"


def test_macs_counter_counts_what_the_paper_counts():
    """FlopCounterMode's 2-per-MAC convention is halved: MobileNetV2 1.0 is the paper's 300M MAdds."""
    model = lightdeploy.create_model("mobilenetv2", calibrate_bn=False)
    assert round(count_macs(model, (224, 224)) / 1e6) == 301


def test_list_models_filters_by_task():
    assert set(list_models("classify")) >= set(DESIGN_NAMES)
    assert all(get_spec(n).task == "segment" for n in list_models("segment"))
