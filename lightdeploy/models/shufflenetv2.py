"""ShuffleNet V2 (Ma et al., ECCV 2018, arXiv 1807.11164): channel split and channel shuffle.

Module names and the stride-2 unit follow torchvision's ``shufflenet_v2_x*`` (docs/models.md §2 lists two
published stride-2 units; this one loads torchvision checkpoints key for key and computes the same
ops in the same order).  Its computed MACs are therefore the "torchvision unit" column of §2.
Layout: helpers, blocks, model, builders.
"""

from __future__ import annotations

import torch
from torch import nn

from lightdeploy.models.labels import IMAGENET
from lightdeploy.models.registry import ModelSpec, Reference, register_model
from lightdeploy.ops import channel_shuffle

STAGE_REPEATS = (4, 8, 4)  # docs/models.md §2: stage2/3/4 repeat 1 + 3, 1 + 7, 1 + 3
# docs/models.md §2 table, columns 0.5x / 1x / 1.5x / 2x: conv1, stage2, stage3, stage4, conv5 channels.
STAGE_OUT_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


# ----------------------------------------------------------------------------------------- helpers
def depthwise_conv(channels: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False)


# ------------------------------------------------------------------------------------------ blocks
class InvertedResidual(nn.Module):
    """The ShuffleNet V2 unit (paper Figure 3 (c) stride 1, (d) stride 2), torchvision's layout.

    Stride 1: split channels in half; one half passes, the other goes 1x1-BN-ReLU, dw3x3-BN,
    1x1-BN-ReLU; concat; shuffle with 2 groups.  Stride 2: both branches see all channels
    (branch1 = dw3x3/2-BN, 1x1-BN-ReLU), each producing half the output.
    """

    def __init__(self, inp: int, oup: int, stride: int, kernel: int = 3):
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                depthwise_conv(inp, kernel, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            depthwise_conv(branch_features, kernel, stride),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


# ------------------------------------------------------------------------------------------- model
class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0):
        super().__init__()
        channels = STAGE_OUT_CHANNELS[width]
        inp = channels[0]
        self.conv1 = nn.Sequential(  # docs/models.md §2: conv1 3x3/2, 24 channels
            nn.Conv2d(3, inp, 3, 2, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for idx, (repeats, oup) in enumerate(zip(STAGE_REPEATS, channels[1:4]), start=2):
            units = [InvertedResidual(inp, oup, 2)] + [InvertedResidual(oup, oup, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{idx}", nn.Sequential(*units))
            inp = oup
        self.conv5 = nn.Sequential(
            nn.Conv2d(inp, channels[-1], 1, 1, 0, bias=False),
            nn.BatchNorm2d(channels[-1]),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x)
        x = x.mean([2, 3])  # global pool as a mean: keeps exported H and W free
        return self.fc(x)


# ---------------------------------------------------------------------------------------- builders
# name -> (width, [C] MACs with the torchvision unit, [C] params incl. BN), docs/models.md §2 table.
_WIDTHS = {
    "shufflenetv2": (1.0, 144.9e6, 2.279e6),
    "shufflenetv2_x0.5": (0.5, 40.5e6, 1.367e6),
    "shufflenetv2_x1.5": (1.5, 295.8e6, 3.504e6),
    "shufflenetv2_x2.0": (2.0, 583.3e6, 7.394e6),
}


def _build(num_classes: int = 1000, width: float = 1.0) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes, width=width)


for _name, (_width, _macs, _params) in _WIDTHS.items():
    register_model(
        ModelSpec(
            name=_name,
            family="shufflenetv2",
            task="classify",
            builder=_build,
            builder_kwargs={"width": _width},
            input_size=(224, 224),
            stride=32,
            num_classes=1000,
            class_names=IMAGENET,
            outputs=("logits",),
            description=f"ShuffleNetV2 {_width}x (channel split, channel shuffle; torchvision unit)",
            reference=Reference(_macs, _params, "docs/models.md §2 table, torchvision-unit [C] column"),
            torchvision_arch=f"shufflenet_v2_x{str(_width).replace('.', '_')}",
        )
    )
