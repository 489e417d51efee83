"""``create_model``: build a registered model, load or calibrate its weights, return it in eval mode."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightdeploy.models.registry import ModelSpec, get_spec

DEFAULT_SEED = 0
# BN re-estimation: the photographs plus this many augmented copies each, in batches of this size.
BN_AUG_COPIES = 5
BN_BATCH = 6
# Random weights are shifted into the ordered regime before BN re-estimation: every BN that still has
# PyTorch's default shift (beta = 0) gets this one, i.e. pre-activations centred one standard deviation
# above zero.  With beta = 0 a BN + ReLU network is chaotic (Yang et al. 2019, "A Mean Field Theory of
# Batch Normalization": perturbations grow geometrically with depth), so benign fp16 / int8 rounding
# would look like an export bug; a network that can be deployed at int8 at all is not chaotic
# (docs/measurements.md#random-weights).  Architecture, parameters and MACs are untouched; loaded
# weights are never changed.
RANDOM_BN_SHIFT = 1.0


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
    seed: int = DEFAULT_SEED,
    calibrate_bn: bool = True,
    weights_key: str | None = None,
) -> nn.Module:
    """Build ``name`` in eval mode.

    Without ``weights`` the model starts from seeded random weights and, unless ``calibrate_bn`` is
    False, its BN shifts are set to ``RANDOM_BN_SHIFT`` and its BN running statistics re-estimated on
    the sample photographs, so activations have real ranges and rounding noise is not amplified
    through depth (docs/design.md#parity).  The same name, options and seed give the same model.
    ``weights_key``: the checkpoint entry holding the state dict, when the file holds several.
    The caller's torch RNG is left as it was (the seed applies to this build only).
    """
    spec = get_spec(name)
    size = spec.check_input_size(input_size or spec.input_size)
    if num_classes is not None and num_classes < 1:
        from lightdeploy.errors import UsageError

        raise UsageError(f"--num-classes must be at least 1; got {num_classes}.")
    if weights is None and spec.pretrained is not None:
        from lightdeploy.models.pretrained import weights_path

        weights = weights_path(spec.pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(spec, num_classes or spec.num_classes, size)
    if weights is not None:
        from lightdeploy.weights import load_weights

        load_weights(model, weights, name, weights_key)
    elif calibrate_bn:
        key = (spec.name, num_classes or spec.num_classes, size, seed)
        cached = _CALIBRATED.get(key)
        if cached is None:
            reestimate_bn(model, spec, size, seed=seed)
            _remember(key, {k: v.clone() for k, v in model.state_dict().items()})
        else:
            model.load_state_dict(cached)
    return model.eval()


# Re-estimating BN costs a few dozen forward passes; exporting one model to several targets (or
# re-running parity) in one process rebuilds the same calibrated model, so keep the last few.
_CALIBRATED: dict[tuple, dict] = {}
_CALIBRATED_MAX = 4


def _remember(key: tuple, state: dict) -> None:
    if len(_CALIBRATED) >= _CALIBRATED_MAX:
        _CALIBRATED.pop(next(iter(_CALIBRATED)))
    _CALIBRATED[key] = state


def build(spec: ModelSpec, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    kwargs = dict(spec.builder_kwargs)
    if "input_size" in inspect.signature(spec.builder).parameters:
        kwargs["input_size"] = input_size  # detectors size their anchors from it
    return spec.builder(num_classes=num_classes, **kwargs)


@torch.no_grad()
def reestimate_bn(model: nn.Module, spec: ModelSpec, input_size: tuple[int, int], seed: int = DEFAULT_SEED) -> None:
    """Replace every BN's running mean/var by their average over the augmented sample photographs,
    after giving every BN still at the default shift (beta = 0) the shift ``RANDOM_BN_SHIFT``.

    A BN a model initialises on purpose (DFANet's fc attention starts at exactly 1) keeps its shift.
    The statistics are estimated after the shift, so each BN sees the activations the shifted layers
    before it really produce.
    """
    from lightdeploy.samples import augmented, photographs, preprocessed

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    pre = {"size": list(input_size), "mean": spec.mean, "std": spec.std, "layout": "NCHW"}
    batch = torch.from_numpy(
        np.concatenate(list(preprocessed(augmented(photographs(), BN_AUG_COPIES, seed), pre).values()))
    )
    model.eval()
    for bn in bns:
        if bn.bias is not None and not bn.bias.any():
            bn.bias.fill_(RANDOM_BN_SHIFT)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
        bn.train()
    for start in range(0, len(batch), BN_BATCH):
        model(batch[start : start + BN_BATCH])
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def eager_from_manifest(manifest: dict, weights: str | Path | None = None, *, calibrate_bn: bool = True) -> nn.Module:
    """Rebuild the eager model an artifact was exported from (``lightdeploy parity DIR``, bench, eval), as
    it was exported: a registered model by name, your own model from its recorded factory
    (``usermodel.rebuild``).  ``weights``: the file the manifest's weights entry names
    (``weights.recorded_weights`` checks its sha256); required when the artifact was exported from a
    weights file.  ``calibrate_bn=False`` skips BN re-estimation (timing needs no values)."""
    from lightdeploy.weights import recorded_weights

    src = manifest["source"]
    if src.get("kind", "registry") != "registry":
        from lightdeploy.usermodel import rebuild

        return rebuild(src, weights)
    recorded = src.get("weights")
    if recorded and "named" in recorded and get_spec(src["model"]).pretrained.sha256 != recorded["sha256"]:
        from lightdeploy.errors import UsageError

        raise UsageError(
            f"The artifact was exported from {recorded['named']} with sha256 {recorded['sha256'][:12]}..., "
            "which this lightdeploy no longer ships; re-export the artifact."
        )
    path = recorded_weights(recorded, weights, search=[])
    key = (recorded or {}).get("key")
    model = create_model(
        src["model"],
        num_classes=src["num_classes"],
        weights=path,
        weights_key=key,
        input_size=tuple(src["input_size"]),
        seed=src.get("seed") or 0,
        calibrate_bn=calibrate_bn,
    )
    return as_exported(model, manifest)


def as_exported(model: nn.Module, manifest: dict) -> nn.Module:
    """``model`` wrapped as the export wrapped it: a registered model's export wrapper (e.g. raw heads),
    or your own model's dict outputs as a tuple."""
    src = manifest["source"]
    if src.get("kind", "registry") != "registry":
        from lightdeploy.usermodel import wrap_outputs

        return wrap_outputs(model, src)
    spec = get_spec(src["model"])
    extra = manifest.get("export_options", {}).get("extra", {})
    return spec.export_wrapper(model, extra) if spec.export_wrapper else model
