"""BiSeNet (Yu et al., ECCV 2018, arXiv 1808.00897): a spatial path and a context path, fused.

The structure is the authors' code (ycszen/TorchSeg, ``model/bisenet/*/network.py``) as docs/models.md §5
records it: a 3-conv spatial path at 1/8, a context path (Xception39 or ResNet18) refined by attention
(ARM) plus a global-context vector, a feature fusion module (FFM), and a 3x3 + 1x1 head upsampled to
the input size.  Auxiliary heads (training only) exist when built with ``aux_heads=True``; the deployed
model has none, so it counts exactly what docs/models.md's computed [C] row counts.

Export-friendly choices (docs/design.md#custom-ops): global pooling is a ``mean`` over H and W; every upsample is
bilinear with ``align_corners=False`` (TorchSeg uses True; False is what TFLite's resize reproduces
exactly) and targets the size of the tensor it joins, so exported H and W stay symbolic; the global
context is added by broadcasting instead of an upsample from 1x1.
Layout: helpers, blocks, backbones, model, builders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightdeploy.models.labels import CITYSCAPES
from lightdeploy.models.registry import ModelSpec, Reference, register_alias, register_model

CITYSCAPES_CLASSES = 19
SPATIAL_CHANNELS = 64  # docs/models.md §5 Spatial Path: 7x7/2, 3x3/2, 3x3/2 at 64 channels ...
CONTEXT_CHANNELS = 128  # ... then 1x1 to 128; ARM, global context and refines are 128 wide too
HEAD_CHANNELS = 64  # docs/models.md §5 Heads: main head 3x3 ConvBNReLU 256 -> 64
# FFM attention reduction.  docs/models.md §5 FFM: TorchSeg uses 1 (256 -> 256 -> 256), CoinCheung 4; the
# paper's value is NOT FOUND.  1 is the authors' code and reproduces the [C] params (1.54M / 12.89M);
# 4 would give 1.44M / 12.79M (-6.4% / -0.8%), outside the 3% tolerance for Xception39.
FFM_REDUCTION = 1

# docs/models.md §5 Context Path, Xception39 (TorchSeg): stem 3x3/2 to 8 channels + maxpool 3x3/2, then
# three stages of (blocks, mid channels); each block outputs 4 x mid (64 / 128 / 256 at 1/8, 1/16, 1/32).
XCEPTION39_STEM = 8
XCEPTION39_STAGES = ((4, 16), (8, 32), (4, 64))
XCEPTION_EXPANSION = 4
# ResNet18 (He et al.; docs/models.md §5 "ResNet18 variant: 256 at 1/16, 512 at 1/32"): stem 7x7/2 to 64
# + maxpool, then four stages of two basic blocks at 64 / 128 / 256 / 512 channels.
RESNET18_STAGES = ((2, 64), (2, 128), (2, 256), (2, 512))


# ----------------------------------------------------------------------------------------- helpers
class ConvBNReLU(nn.Sequential):
    """Conv (no bias), BatchNorm, and ReLU unless ``relu=False``: TorchSeg's ``ConvBnRelu``."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def upsample_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``like``'s H and W (a shape read at run time stays symbolic)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def global_average(x: torch.Tensor) -> torch.Tensor:
    """GAP as a mean: adaptive in H and W, unlike ``avg_pool2d(x, x.shape[2:])`` (fixed on export)."""
    return x.mean((2, 3), keepdim=True)


# ------------------------------------------------------------------------------------------ blocks
class SeparableConvBN(nn.Sequential):
    """Xception39's separable conv: depthwise 3x3 (no BN), then 1x1 + BN (+ ReLU) (docs/models.md §5)."""

    def __init__(self, inp: int, oup: int, stride: int = 1, relu: bool = True):
        super().__init__(
            nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
            ConvBNReLU(inp, oup, kernel=1, relu=relu),
        )


class XceptionBlock(nn.Module):
    """Three separable convs (in -> mid at ``stride``, mid -> mid, mid -> 4 mid, the last without ReLU),
    plus a shortcut (a separable 3x3/stride projection in a stage's first block), then ReLU(sum)."""

    def __init__(self, inp: int, mid: int, stride: int):
        super().__init__()
        oup = mid * XCEPTION_EXPANSION
        self.residual = nn.Sequential(
            SeparableConvBN(inp, mid, stride),
            SeparableConvBN(mid, mid),
            SeparableConvBN(mid, oup, relu=False),
        )
        self.shortcut = SeparableConvBN(inp, oup, stride, relu=False) if stride != 1 or inp != oup else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class BasicBlock(nn.Module):
    """ResNet's basic block; names follow torchvision so its resnet18 checkpoint loads key for key."""

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, oup, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(oup)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(oup, oup, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(oup)
        self.downsample = None
        if stride != 1 or inp != oup:
            self.downsample = nn.Sequential(nn.Conv2d(inp, oup, 1, stride, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class AttentionRefinement(nn.Module):
    """ARM (TorchSeg ``AttentionRefinement``): f = ConvBNReLU3x3(x); f * sigmoid(BN(W . GAP(f)))."""

    def __init__(self, inp: int, oup: int):
        super().__init__()
        self.conv = ConvBNReLU(inp, oup, kernel=3)
        self.attention = ConvBNReLU(oup, oup, kernel=1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        return f * torch.sigmoid(self.attention(global_average(f)))


class FeatureFusion(nn.Module):
    """FFM (TorchSeg ``FeatureFusion``): x = ConvBNReLU1x1(cat(sp, cp)); x + x * sigmoid(W2 relu(W1 GAP x))."""

    def __init__(self, inp: int, oup: int, reduction: int = FFM_REDUCTION):
        super().__init__()
        self.conv = ConvBNReLU(inp, oup, kernel=1)
        # No BN in the attention branch (docs/models.md §5 FFM).
        self.attention = nn.Sequential(
            nn.Conv2d(oup, oup // reduction, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(oup // reduction, oup, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat((spatial, context), dim=1))
        return x + x * self.attention(global_average(x))


class SegmentHead(nn.Sequential):
    """3x3 ConvBNReLU then a 1x1 classifier with bias (TorchSeg ``BiSeNetHead``, without its upsample)."""

    def __init__(self, inp: int, mid: int, num_classes: int):
        super().__init__(ConvBNReLU(inp, mid, kernel=3), nn.Conv2d(mid, num_classes, 1, bias=True))


# --------------------------------------------------------------------------------------- backbones
class SpatialPath(nn.Sequential):
    """Three stride-2 ConvBNReLUs (7x7, 3x3, 3x3) at 64 channels, then 1x1 to 128: 1/8 resolution."""

    def __init__(self):
        super().__init__(
            ConvBNReLU(3, SPATIAL_CHANNELS, kernel=7, stride=2),
            ConvBNReLU(SPATIAL_CHANNELS, SPATIAL_CHANNELS, kernel=3, stride=2),
            ConvBNReLU(SPATIAL_CHANNELS, SPATIAL_CHANNELS, kernel=3, stride=2),
            ConvBNReLU(SPATIAL_CHANNELS, CONTEXT_CHANNELS, kernel=1),
        )


class Xception39(nn.Module):
    """Context-path backbone; returns the 1/8, 1/16 and 1/32 features (64, 128, 256 channels)."""

    channels = tuple(mid * XCEPTION_EXPANSION for _, mid in XCEPTION39_STAGES)

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            ConvBNReLU(3, XCEPTION39_STEM, kernel=3, stride=2), nn.MaxPool2d(3, stride=2, padding=1)
        )
        inp = XCEPTION39_STEM
        stages = []
        for blocks, mid in XCEPTION39_STAGES:
            layers = [XceptionBlock(inp, mid, stride=2)]
            inp = mid * XCEPTION_EXPANSION
            layers += [XceptionBlock(inp, mid, stride=1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return tuple(features)


class ResNet18(nn.Module):
    """ResNet18 without its classifier; returns the 1/8, 1/16 and 1/32 features (128, 256, 512)."""

    channels = tuple(c for _, c in RESNET18_STAGES[1:])

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inp = 64
        for idx, (blocks, oup) in enumerate(RESNET18_STAGES, start=1):
            stride = 1 if idx == 1 else 2
            layers = [BasicBlock(inp, oup, stride)] + [BasicBlock(oup, oup, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{idx}", nn.Sequential(*layers))
            inp = oup

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        c8 = self.layer2(x)
        c16 = self.layer3(c8)
        c32 = self.layer4(c16)
        return c8, c16, c32


BACKBONES = {"xception39": Xception39, "resnet18": ResNet18}
# docs/models.md §5 Heads: auxiliary 3x3 ConvBNReLU width, 128 for Xception39 and 256 for ResNet18.
AUX_HEAD_CHANNELS = {"xception39": 128, "resnet18": 256}


# ------------------------------------------------------------------------------------------- model
class BiSeNet(nn.Module):
    """BiSeNet; eval forward returns ``(logits [N, classes, H, W], mask [N, H, W] int64)``.

    In training mode with ``aux_heads=True`` it returns ``(main, aux16, aux8)`` logits at input size,
    the three terms of the paper's loss (docs/models.md §5 Heads).
    """

    def __init__(self, num_classes: int = CITYSCAPES_CLASSES, backbone: str = "xception39", aux_heads: bool = False):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown BiSeNet backbone {backbone!r}; choose from {sorted(BACKBONES)}")
        self.spatial_path = SpatialPath()
        self.context_path = BACKBONES[backbone]()
        _, c16, c32 = self.context_path.channels
        self.global_context = ConvBNReLU(c32, CONTEXT_CHANNELS, kernel=1)  # applied to GAP(C32)
        self.arm32 = AttentionRefinement(c32, CONTEXT_CHANNELS)
        self.arm16 = AttentionRefinement(c16, CONTEXT_CHANNELS)
        self.refine16 = ConvBNReLU(CONTEXT_CHANNELS, CONTEXT_CHANNELS, kernel=3)
        self.refine8 = ConvBNReLU(CONTEXT_CHANNELS, CONTEXT_CHANNELS, kernel=3)
        self.ffm = FeatureFusion(2 * CONTEXT_CHANNELS, 2 * CONTEXT_CHANNELS)
        self.head = SegmentHead(2 * CONTEXT_CHANNELS, HEAD_CHANNELS, num_classes)
        self.aux_heads = None
        if aux_heads:  # on the refined 1/16 and 1/8 context outputs
            mid = AUX_HEAD_CHANNELS[backbone]
            self.aux_heads = nn.ModuleList(
                [SegmentHead(CONTEXT_CHANNELS, mid, num_classes), SegmentHead(CONTEXT_CHANNELS, mid, num_classes)]
            )

    def forward(self, x: torch.Tensor):
        spatial = self.spatial_path(x)
        c8, c16, c32 = self.context_path(x)
        # The global context is a [N, 128, 1, 1] vector: broadcasting is the "upsample" to C32's size.
        context32 = self.arm32(c32) + self.global_context(global_average(c32))
        refined16 = self.refine16(upsample_like(context32, c16))
        context16 = self.arm16(c16) + refined16
        refined8 = self.refine8(upsample_like(context16, c8))
        logits = upsample_like(self.head(self.ffm(spatial, refined8)), x)
        if self.training and self.aux_heads is not None:
            aux16 = upsample_like(self.aux_heads[0](refined16), x)
            aux8 = upsample_like(self.aux_heads[1](refined8), x)
            return logits, aux16, aux8
        return logits, logits.argmax(1)


# ---------------------------------------------------------------------------------------- builders
def _build(num_classes: int = CITYSCAPES_CLASSES, backbone: str = "xception39", aux_heads: bool = False) -> BiSeNet:
    return BiSeNet(num_classes=num_classes, backbone=backbone, aux_heads=aux_heads)


# name -> (backbone, [C] GMACs at 768x1536, [C] params), docs/models.md §5 Numbers, "computed" row (TorchSeg
# structure, no aux heads, 19 classes).  768x1536 is the row's size that is a multiple of the stride.
_VARIANTS = {
    "bisenet_xception39": ("xception39", 15.62e9, 1.54e6),
    "bisenet_resnet18": ("resnet18", 58.34e9, 12.89e6),
}

for _name, (_backbone, _macs, _params) in _VARIANTS.items():
    register_model(
        ModelSpec(
            name=_name,
            family="bisenet",
            task="segment",
            builder=_build,
            builder_kwargs={"backbone": _backbone},
            # Cityscapes' 1:2 aspect at half its 1024x2048 resolution: a CPU-sized default (the paper
            # times 2048x1024 on a GPU) and a multiple of the stride.
            input_size=(512, 1024),
            # Five halvings in the context path (C32); the x2 upsamples are exact at multiples of 32.
            # (Every upsample targets the joined tensor's size, so other sizes, e.g. the paper's
            # 640x360, also run, as in TorchSeg.)
            stride=32,
            num_classes=CITYSCAPES_CLASSES,
            outputs=("logits", "mask"),
            class_names=CITYSCAPES,
            description=f"BiSeNet, {_backbone} context path (TorchSeg structure; Cityscapes 19 classes)",
            reference=Reference(_macs, _params, "docs/models.md §5 computed row [C]", at=(768, 1536)),
        )
    )

register_alias("bisenet", "bisenet_xception39")
