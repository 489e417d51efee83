"""DFANet (Li et al., CVPR 2019, arXiv 1904.02216): deep feature aggregation over three cascaded
lightweight Xception backbones.

The paper's full tables were not available; the structure is the one docs/models.md §6 records from the
reimplementations (Tramac/awesome-semantic-segmentation-pytorch ``core/models/dfanet.py``, huaifeng1993,
jandylin), which reproduces the paper's 3.4 / 1.7 GFLOPs for backbone A exactly when only the three
backbones are counted:
- each backbone: conv1 3x3/2 (first backbone only), enc2, enc3, enc4 (stride 2 each), fc attention;
- sub-network aggregation: backbone i's fc-attention output, upsampled x4, is concatenated with its
  enc2 output to feed backbone i+1's enc2;
- sub-stage aggregation: enc3 and enc4 of backbone i+1 also take enc3 and enc4 of backbone i;
- decoder: the three enc2 outputs and the three fc-attention outputs, reduced to 32 channels and
  summed at 1/4, a 1x1 classifier, x4 upsample.

Export-friendly choices (docs/design.md#custom-ops): global pooling is a ``mean``; every upsample is bilinear with
``align_corners=False`` (the reimplementations use True; False is what TFLite's resize reproduces
exactly) and targets the size of the tensor it joins, so exported H and W stay symbolic.
Layout: helpers, blocks, backbone, model, builders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightdeploy.models.labels import CITYSCAPES
from lightdeploy.models.registry import ModelSpec, Reference, register_alias, register_model

CITYSCAPES_CLASSES = 19
STEM_CHANNELS = 8  # docs/models.md §6 backbone table, conv1: 3x3, 8, stride 2
ENCODER_BLOCKS = (4, 6, 4)  # enc2, enc3, enc4 repeats (same table)
# Output channels of enc2 / enc3 / enc4; each block's inner separable convs are a quarter of that.
# Backbone A: docs/models.md §6 backbone table, column A, [R] (reimplementations).
# Backbone B: same table, column B, tagged [M]: recalled, NOT verified against the paper (no source
# gives B's channels).  Built as recalled; it computes to 1.72 GMACs for the backbones, not the
# recalled 2.1G (docs/models.md §6 verification note), so treat B as approximate.
ENCODER_CHANNELS = {
    "a": (48, 96, 192),
    "b": (32, 64, 128),
}
FC_ATTENTION_CLASSES = 1000  # the FC is the backbone's ImageNet classifier (docs/models.md §6, fc attention)
DECODER_CHANNELS = 32  # docs/models.md §6 Decoder (reimplementations); the paper's width is NOT FOUND
NUM_BACKBONES = 3


# ----------------------------------------------------------------------------------------- helpers
class ConvBNReLU(nn.Sequential):
    """Conv (no bias), BatchNorm, ReLU."""

    def __init__(self, inp: int, oup: int, kernel: int = 1, stride: int = 1):
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU(inplace=True),
        )


def upsample_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``like``'s H and W (a shape read at run time stays symbolic).

    At input sizes that are multiples of the stride (64) this is exactly the x2 / x4 / x8 / x16
    upsample of the reimplementations.
    """
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------ blocks
class SeparableConv(nn.Sequential):
    """Depthwise 3x3, BN, pointwise 1x1, BN: the reimplementations' ``SeparableConv2d`` + its BN."""

    def __init__(self, inp: int, oup: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
            nn.BatchNorm2d(inp),
            nn.Conv2d(inp, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )


class XceptionBlock(nn.Module):
    """Three ReLU-separable-conv steps (in -> out/4, out/4 -> out/4, out/4 -> out at ``stride``) plus
    a shortcut: identity, or 1x1/stride conv + BN where the shape changes (Tramac / huaifeng ``BlockA``).

    The stride sits in the last separable conv, as in Tramac and huaifeng (docs/models.md §6 notes).  The
    ReLU opens each step (Xception's pre-activation order) and the shortcut takes the block's input
    as it is: Xception's form, without the reimplementations' in-place ReLU side effect on the input.
    """

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        mid = oup // 4
        self.residual = nn.Sequential(
            nn.ReLU(),
            SeparableConv(inp, mid),
            nn.ReLU(),
            SeparableConv(mid, mid),
            nn.ReLU(),
            SeparableConv(mid, oup, stride),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or inp != oup:
            self.shortcut = nn.Sequential(nn.Conv2d(inp, oup, 1, stride, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


def encoder_stage(inp: int, oup: int, blocks: int) -> nn.Sequential:
    """One encoder stage ("enc2/3/4"): the first block halves the resolution."""
    return nn.Sequential(XceptionBlock(inp, oup, 2), *[XceptionBlock(oup, oup, 1) for _ in range(blocks - 1)])


class FCAttention(nn.Module):
    """fc attention (docs/models.md §6): GAP, FC C -> 1000 (the ImageNet classifier), 1x1 conv 1000 -> C
    + BN + ReLU, then channel-wise multiply with the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, FC_ATTENTION_CLASSES)
        self.conv = ConvBNReLU(FC_ATTENTION_CLASSES, channels, kernel=1)
        # Initialise the attention to exactly 1 (BN scale 0, shift 1), the way zero-initialised
        # residual BNs start a ResNet as identity (Goyal et al. 2017).  Untrained, the pooled 1000-vector
        # hardly varies between images, so BN statistics re-estimated on a few photographs give a
        # tiny variance that turns this ReLU "attention" into a x1000 gain per backbone (logits ~1e6
        # on random inputs, beyond fp32 parity).  Trained or loaded weights replace this.
        nn.init.zeros_(self.conv[1].weight)
        nn.init.ones_(self.conv[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3))  # [N, C]: a mean keeps H and W free on export
        weights = self.conv(self.fc(pooled)[:, :, None, None])  # [N, C, 1, 1]
        return x * weights


# ---------------------------------------------------------------------------------------- backbone
class Backbone(nn.Module):
    """One modified-Xception backbone of the cascade: enc2, enc3, enc4, fc attention.

    The first backbone's enc2 reads the stem; a later backbone's enc2 reads the sub-network
    aggregate (built by ``DFANet.forward``) and its enc3 / enc4 also read the previous backbone's
    enc3 / enc4 (sub-stage aggregation, docs/models.md §6).
    """

    def __init__(self, channels: tuple[int, int, int], first: bool):
        super().__init__()
        c2, c3, c4 = channels
        # Later backbones: enc2 <- cat(enc2_prev, fca_prev), enc3 <- cat(enc3_prev, enc2),
        # enc4 <- cat(enc4_prev, enc3); for A that is 48 + 192 = 240, 96 + 48 = 144, 192 + 96 = 288 in.
        in2, in3, in4 = (STEM_CHANNELS, c2, c3) if first else (c2 + c4, c3 + c2, c4 + c3)
        self.enc2 = encoder_stage(in2, c2, ENCODER_BLOCKS[0])
        self.enc3 = encoder_stage(in3, c3, ENCODER_BLOCKS[1])
        self.enc4 = encoder_stage(in4, c4, ENCODER_BLOCKS[2])
        self.fca = FCAttention(c4)

    def forward(self, x: torch.Tensor, previous: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``previous`` is the previous backbone's (enc3, enc4), None for the first backbone.

        Returns this backbone's (enc2, enc3, enc4, fca) outputs.
        """
        enc2 = self.enc2(x)
        enc3 = self.enc3(enc2 if previous is None else torch.cat((previous[0], enc2), dim=1))
        enc4 = self.enc4(enc3 if previous is None else torch.cat((previous[1], enc3), dim=1))
        return enc2, enc3, enc4, self.fca(enc4)


# ------------------------------------------------------------------------------------------- model
class DFANet(nn.Module):
    """DFANet; forward returns ``(logits [N, classes, H, W], mask [N, H, W] int64)``.

    Resolutions for an H x W input: the three backbones' enc2 outputs are at 1/4, 1/8, 1/16 and their
    fc-attention outputs at 1/16, 1/32, 1/64.
    """

    def __init__(self, num_classes: int = CITYSCAPES_CLASSES, variant: str = "a"):
        super().__init__()
        if variant not in ENCODER_CHANNELS:
            raise ValueError(f"unknown DFANet variant {variant!r}; choose from {sorted(ENCODER_CHANNELS)}")
        channels = ENCODER_CHANNELS[variant]
        c2, _, c4 = channels
        self.stem = ConvBNReLU(3, STEM_CHANNELS, kernel=3, stride=2)  # conv1 of the first backbone
        self.backbones = nn.ModuleList([Backbone(channels, first=(i == 0)) for i in range(NUM_BACKBONES)])
        # Decoder (docs/models.md §6): reduce each enc2 and fca output to 32 channels; fuse the enc2 sum.
        self.enc2_reduce = nn.ModuleList([ConvBNReLU(c2, DECODER_CHANNELS) for _ in range(NUM_BACKBONES)])
        self.fca_reduce = nn.ModuleList([ConvBNReLU(c4, DECODER_CHANNELS) for _ in range(NUM_BACKBONES)])
        self.fusion = ConvBNReLU(DECODER_CHANNELS, DECODER_CHANNELS)
        self.classifier = nn.Conv2d(DECODER_CHANNELS, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor):
        enc2s, fcas = [], []
        enc2_input, previous = self.stem(x), None
        for index, backbone in enumerate(self.backbones):
            enc2, enc3, enc4, fca = backbone(enc2_input, previous)
            enc2s.append(enc2)
            fcas.append(fca)
            previous = (enc3, enc4)
            if index + 1 < len(self.backbones):
                # Sub-network aggregation: fca (1/4 of enc2's size) upsampled x4, joined to enc2.
                enc2_input = torch.cat((enc2, upsample_like(fca, enc2)), dim=1)
        # Decoder, everything at the first backbone's enc2 resolution (1/4 of the input).
        quarter = enc2s[0]
        fused = self.enc2_reduce[0](quarter)
        for reduce, enc2 in zip(self.enc2_reduce[1:], enc2s[1:]):
            fused = fused + upsample_like(reduce(enc2), quarter)  # x2, x4
        fused = self.fusion(fused)
        for reduce, fca in zip(self.fca_reduce, fcas):
            fused = fused + upsample_like(reduce(fca), quarter)  # x4, x8, x16
        logits = upsample_like(self.classifier(fused), x)  # x4
        return logits, logits.argmax(1)


# ---------------------------------------------------------------------------------------- builders
def _build(num_classes: int = CITYSCAPES_CLASSES, variant: str = "a") -> DFANet:
    return DFANet(num_classes=num_classes, variant=variant)


# name -> (variant, [C] total MACs at 1024x1024, [C] params), docs/models.md §6 Numbers, "computed" rows.
# Total = backbones + decoder (3.67G for A); the paper's 3.4G is the backbones alone (3.40G), which
# tests/test_segmenters.py checks separately.
_VARIANTS = {
    "dfanet_a": ("a", 3.67e9, 1.83e6),
    "dfanet_b": ("b", 1.93e9, 1.10e6),  # backbone B channels are recalled [M]: see ENCODER_CHANNELS
}

for _name, (_variant, _macs, _params) in _VARIANTS.items():
    register_model(
        ModelSpec(
            name=_name,
            family="dfanet",
            task="segment",
            builder=_build,
            builder_kwargs={"variant": _variant},
            # The paper's headline setting for A (3.4 GFLOPs, 71.3% mIoU at 1024x1024).
            input_size=(1024, 1024),
            # Six halvings: the third backbone's enc4 / fca output is at 1/64, and the x4 / x16 upsamples
            # back to enc2 and 1/4 are exact only when H and W are multiples of 64.
            stride=64,
            num_classes=CITYSCAPES_CLASSES,
            outputs=("logits", "mask"),
            class_names=CITYSCAPES,
            description=f"DFANet {_variant.upper()} (three cascaded Xception backbones, fc attention; "
            "reimplementation structure; Cityscapes 19 classes)",
            reference=Reference(_macs, _params, "docs/models.md §6 computed row [C]", at=(1024, 1024)),
        )
    )

register_alias("dfanet", "dfanet_a")
