"""MobileNetV2 (Sandler et al., arXiv 1801.04381): inverted residuals with linear bottlenecks.

Module names and order mirror torchvision's ``mobilenet_v2`` exactly, so a torchvision checkpoint
loads key for key and computes the same ops in the same order (design: deploy the weights users have).
Layout: helpers, blocks, model, builders.
"""

from __future__ import annotations

import torch
from torch import nn

from lightdeploy.models.labels import IMAGENET
from lightdeploy.models.registry import ModelSpec, Reference, register_model

# docs/models.md §1, the paper's Table 2 as torchvision writes it: (t expansion, c channels, n repeats, s stride).
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
FIRST_CHANNELS = 32  # Table 2, row 1: conv2d 3x3, 32, stride 2
LAST_CHANNELS = 1280  # Table 2, row 9: conv2d 1x1, 1280 (not thinned below width 1.0)
DROPOUT = 0.2  # torchvision's classifier: Dropout(0.2), Linear


# ----------------------------------------------------------------------------------------- helpers
def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never below 90% of ``value`` (docs/models.md §1)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNReLU6(nn.Sequential):
    """Conv, BatchNorm, ReLU6: torchvision's ``Conv2dNormActivation`` with the same child indices."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


# ------------------------------------------------------------------------------------------ blocks
class InvertedResidual(nn.Module):
    """Expand 1x1 (omitted when t = 1), depthwise 3x3, linear 1x1 projection (no activation)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        # The shortcut exists only when the block keeps both resolution and width (§1).
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),  # linear bottleneck: no ReLU after the projection
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# ------------------------------------------------------------------------------------------- model
class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        inp = make_divisible(FIRST_CHANNELS * width_mult)
        self.last_channel = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, inp, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            oup = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                inp = oup
        features.append(ConvBNReLU6(inp, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(self.last_channel, num_classes))
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # Adaptive pooling (not a fixed 7x7 kernel) keeps the exported H and W free.
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------- builders
# Width -> computed [C] MACs and params at 224x224 (docs/models.md §1, "computed" row: MACs 300.8/582.2/
# 209.1/97.1/59.3M; params +BN 3.505M/6.109M; the thinner widths' params there are conv+FC only, so
# ours add BN: 0.75 -> 2.636M, 0.5 -> 1.969M, 0.35 -> 1.677M, each within 1.5% of the table's value).
_WIDTHS = {
    "mobilenetv2": (1.0, 300.8e6, 3.505e6),
    "mobilenetv2_x0.35": (0.35, 59.3e6, 1.663e6),
    "mobilenetv2_x0.5": (0.5, 97.1e6, 1.950e6),
    "mobilenetv2_x0.75": (0.75, 209.1e6, 2.610e6),
    "mobilenetv2_x1.4": (1.4, 582.2e6, 6.109e6),
}


def _build(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult)


for _name, (_width, _macs, _params) in _WIDTHS.items():
    register_model(
        ModelSpec(
            name=_name,
            family="mobilenetv2",
            task="classify",
            builder=_build,
            builder_kwargs={"width_mult": _width},
            input_size=(224, 224),
            stride=32,
            num_classes=1000,
            class_names=IMAGENET,
            outputs=("logits",),
            description=f"MobileNetV2 width {_width} (inverted residuals, linear bottlenecks)",
            reference=Reference(_macs, _params, "docs/models.md §1 computed row [C]"),
            torchvision_arch="mobilenet_v2",
        )
    )
