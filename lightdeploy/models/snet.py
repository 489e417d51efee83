"""SNet49 / SNet146 / SNet535: ThunderNet's ShuffleNetV2 backbones (Qin et al., arXiv 1903.11752).

Rules (docs/models.md §4): every depthwise conv is 5x5; SNet49 keeps a 1x1 conv5 compressed to 512
channels; SNet146 and SNet535 drop conv5.  The units are the official Megvii-style ones [O]: the
stride-2 "proj" branch is dw5x5/2-BN then 1x1 (inp -> inp)-BN-ReLU, and the main branch is 1x1
(inp -> out/2), dw5x5-BN, 1x1 (-> out - inp), so the split is uneven.  Channel shuffle is written
torchvision's way (concat, then shuffle); Megvii's even/odd split is the same family up to a fixed
relabelling of channels.  The detectors take C4 = stage3 and C5 = stage4 (conv5 for SNet49).
"""

from __future__ import annotations

import torch
from torch import nn

from lightdeploy.models.labels import IMAGENET
from lightdeploy.models.registry import ModelSpec, Reference, register_model
from lightdeploy.ops import channel_shuffle

KERNEL = 5  # docs/models.md §4: "All 3x3 depthwise convs are replaced by 5x5" (official k = 5 [O])
STAGE_REPEATS = (4, 8, 4)  # docs/models.md §4 SNet table: 1 + 3, 1 + 7, 1 + 3
# docs/models.md §4 SNet table: conv1, stage2, stage3 (C4), stage4 (C5), conv5 (None: dropped).
SNET_CHANNELS = {
    49: (24, 60, 120, 240, 512),
    146: (24, 132, 264, 528, None),
    535: (48, 248, 496, 992, None),
}


# ------------------------------------------------------------------------------------------ blocks
class ShuffleV2Block(nn.Module):
    """Megvii's ShuffleNetV2 unit with a 5x5 depthwise conv (official ThunderNet code [O])."""

    def __init__(self, inp: int, oup: int, stride: int, kernel: int = KERNEL):
        super().__init__()
        self.stride = stride
        pad = kernel // 2
        if stride == 1:
            inp = inp // 2  # the main branch sees one half of the split
        mid = oup // 2
        self.branch_main = nn.Sequential(
            nn.Conv2d(inp, mid, 1, 1, 0, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel, stride, pad, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, oup - inp, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup - inp),
            nn.ReLU(inplace=True),
        )
        if stride == 2:
            self.branch_proj = nn.Sequential(
                nn.Conv2d(inp, inp, kernel, stride, pad, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, inp, 1, 1, 0, bias=False),
                nn.BatchNorm2d(inp),
                nn.ReLU(inplace=True),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            proj, main = x.chunk(2, dim=1)
            out = torch.cat((proj, self.branch_main(main)), dim=1)
        else:
            out = torch.cat((self.branch_proj(x), self.branch_main(x)), dim=1)
        return channel_shuffle(out, 2)


# ------------------------------------------------------------------------------------------- model
class SNet(nn.Module):
    """SNet classifier; ``features(x)`` returns (C4, C5) for the detectors."""

    def __init__(self, depth: int = 146, num_classes: int = 1000):
        super().__init__()
        c1, c2, c3, c4, c5 = SNET_CHANNELS[depth]
        self.conv1 = nn.Sequential(nn.Conv2d(3, c1, 3, 2, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inp = [], c1
        for repeats, oup in zip(STAGE_REPEATS, (c2, c3, c4)):
            stages.append(
                nn.Sequential(ShuffleV2Block(inp, oup, 2), *[ShuffleV2Block(oup, oup, 1) for _ in range(repeats - 1)])
            )
            inp = oup
        self.stage2, self.stage3, self.stage4 = stages
        if c5 is not None:
            self.conv5 = nn.Sequential(nn.Conv2d(inp, c5, 1, bias=False), nn.BatchNorm2d(c5), nn.ReLU(inplace=True))
            inp = c5
        else:
            self.conv5 = nn.Identity()
        self.c4_channels, self.c5_channels = c3, inp
        self.fc = nn.Linear(inp, num_classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c4 = self.stage3(self.stage2(self.maxpool(self.conv1(x))))
        c5 = self.conv5(self.stage4(c4))
        return c4, c5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c5 = self.features(x)
        return self.fc(c5.mean([2, 3]))


# ---------------------------------------------------------------------------------------- builders
# docs/models.md §4 "Backbone complexity [C] at 224 including FC", Megvii-style stride-2 unit column.
_DEPTHS = {49: (51.2e6, 0.876e6), 146: (162.5e6, 1.573e6), 535: (539.9e6, 4.535e6)}


def _build(num_classes: int = 1000, depth: int = 146) -> SNet:
    return SNet(depth=depth, num_classes=num_classes)


for _depth, (_macs, _params) in _DEPTHS.items():
    register_model(
        ModelSpec(
            name=f"snet{_depth}",
            family="snet",
            task="classify",
            builder=_build,
            builder_kwargs={"depth": _depth},
            input_size=(224, 224),
            stride=32,
            num_classes=1000,
            class_names=IMAGENET,
            outputs=("logits",),
            description=f"SNet{_depth} (ThunderNet's ShuffleNetV2, 5x5 depthwise)",
            reference=Reference(_macs, _params, "docs/models.md §4 SNet complexity [C], Megvii-unit column"),
        )
    )
