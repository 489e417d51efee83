"""Light-Head R-CNN, setting S (Li et al., arXiv 1711.07264): Xception-like backbone + thin-map head.

docs/models.md §3.  What is built, and from which row:

- **Backbone** (docs/models.md §3 row "S-model backbone table" [R]; MACs [M] unverified):

      stage   output (224 in)  operator                         channels  repeat
      conv1   112x112          3x3 conv /2, BN, ReLU                  24       1
      pool    56x56            3x3 max pool /2                        24       1
      stage2  28x28            unit (first /2)                       144   1 + 3
      stage3  14x14  (= C4)    unit (first /2)                       288   1 + 7
      stage4  7x7    (= C5)    unit (first /2)                       576   1 + 3

  The **unit** is the public reimplementation's ("Xception-like Model as defined in Light-Head
  R-CNN" [R]): ReLU -> separable 3x3 conv (3x3 depthwise with the unit's stride, then 1x1 to the
  unit's width) -> BN, no residual.  The paper's own unit is NOT FOUND; this one builds the table.
- **RPN** (the paper's high-speed list: "RPN convolution to 256 channels" [P]; structure of the
  official L code [O]): on C4 (stride 16), 3x3 conv 288 -> 256 + ReLU, then 1x1 objectness (one
  sigmoid logit per anchor) and 1x1 deltas; anchors sizes {32, 64, 128, 256, 512} x ratios
  {1/2, 1, 2} = 15 per location [O]; proposals at test [O]: top 6000, NMS 0.7, keep 1000.
- **Large separable convolution** [S]/[O] on C5: (15x1 -> 64, then 1x15 -> 490) + (1x15 -> 64,
  then 15x1 -> 490), k = 15, C_mid = 64 (setting S), C_out = 10 x 7 x 7 = 490, no activation inside
  the branches, **ReLU after the sum** [O].  C5 is at stride 32: setting S "abandons the atrous
  algorithm" [P high-speed list], so the thin map is not dilated back to stride 16 as in the
  ResNet-101 L setting, and PSRoIAlign reads it with spatial scale 1/32.
- **PSRoIAlign** 10 x 7 x 7 (torchvision semantics: average of 2 x 2 samples, -0.5 offset; the
  official kernel takes the max with no offset [O], see docs/models.md §3 warning), sampling ratio 2.
- **R-CNN subnet**: **one 2048-d fc** + ReLU [S]/[O] (``ps_fc_1``), then class (C + 1) and class-wise
  box (4C) layers; decode stds (0.1, 0.1, 0.2, 0.2) [O], score threshold 0.05, NMS 0.5 [O], K = 100.

**Input 512x512 by default.**  The size behind the paper's 102 FPS is NOT FOUND, and the L setting
uses an 800-pixel short side [O].  The exported graph is static and square inputs keep the manifest
simple; 512 is a multiple of the stride 32 that keeps the stride-32 thin map at 16x16, so a 7x7
PSRoIAlign grid still has about one feature cell per bin for a 224-pixel object, while the whole
detector stays CPU-sized (see ``lightdeploy info lighthead_rcnn``).
"""

from __future__ import annotations

import torch
from torch import nn

from lightdeploy.models import _detection as det
from lightdeploy.models.labels import COCO
from lightdeploy.models.registry import ModelSpec, register_model

STEM = 24  # conv1 3x3/2, 24 channels
STAGES = ((144, 4), (288, 8), (576, 4))  # (channels, 1 + repeats) at strides 8 / 16 / 32
ALPHA, POOLED = 10, 7  # C_out = 10 x 7 x 7 = 490
THIN_CHANNELS = ALPHA * POOLED * POOLED
LARGE_KERNEL, MID_CHANNELS = 15, 64  # setting S [S]
RPN_CHANNELS = 256  # [P] high-speed list
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # [O] scales [2, 4, 8, 16, 32] x stride 16
ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # [O]
FC_DIM = 2048  # [S]/[O] ps_fc_1


class XceptionUnit(nn.Sequential):
    """ReLU -> 3x3 depthwise (stride) -> 1x1 -> BN; no residual (the [R] unit)."""

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
            nn.Conv2d(inp, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )


class XceptionLike(nn.Module):
    """The S-model backbone; ``features(x)`` returns (C4 = stage3, C5 = stage4)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, STEM, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inp = [], STEM
        for oup, repeats in STAGES:
            units = [XceptionUnit(inp, oup, 2)] + [XceptionUnit(oup, oup, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            inp = oup
        self.stage2, self.stage3, self.stage4 = stages
        self.c4_channels, self.c5_channels = STAGES[1][0], STAGES[2][0]

    def features(self, x: torch.Tensor):
        c4 = self.stage3(self.stage2(self.maxpool(self.conv1(x))))
        return c4, self.stage4(c4)


class LargeSeparableConv(nn.Module):
    """(k x 1 -> C_mid, 1 x k -> C_out) + (1 x k -> C_mid, k x 1 -> C_out), then ReLU after the sum."""

    def __init__(self, inp: int, k: int = LARGE_KERNEL, mid: int = MID_CHANNELS, out: int = THIN_CHANNELS):
        super().__init__()
        p = k // 2
        self.col = nn.Sequential(
            nn.Conv2d(inp, mid, (k, 1), padding=(p, 0)), nn.Conv2d(mid, out, (1, k), padding=(0, p))
        )
        self.row = nn.Sequential(
            nn.Conv2d(inp, mid, (1, k), padding=(0, p)), nn.Conv2d(mid, out, (k, 1), padding=(p, 0))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.col(x) + self.row(x))


class RPN(nn.Module):
    """3x3 conv to 256 + ReLU, then 1x1 objectness (A) and 1x1 deltas (4A)."""

    def __init__(self, inp: int, num_anchors: int, mid: int = RPN_CHANNELS):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(inp, mid, 3, padding=1), nn.ReLU(inplace=True))
        self.cls = nn.Conv2d(mid, num_anchors, 1)
        self.reg = nn.Conv2d(mid, 4 * num_anchors, 1)
        for layer in (self.conv[0], self.cls, self.reg):
            det.init_normal(layer, det.RPN_INIT_STD)

    def forward(self, x: torch.Tensor):
        h = self.conv(x)
        return self.cls(h), self.reg(h)


class RCNNHead(nn.Module):
    """PSRoIAlign output [R, 10, 7, 7] -> flatten 490 -> fc 2048 + ReLU -> class / box layers."""

    def __init__(self, num_classes: int, in_features: int = THIN_CHANNELS, fc_dim: int = FC_DIM):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_features, fc_dim), nn.ReLU(inplace=True))
        self.cls = nn.Linear(fc_dim, num_classes + 1)
        self.reg = nn.Linear(fc_dim, 4 * num_classes)
        # E[h^2] measured on the sample photographs at 512 after BN re-estimation
        det.init_untrained_classifier(self.cls, input_mean_square=LIGHTHEAD_FC_MEAN_SQUARE)
        det.init_normal(self.reg, det.BOX_INIT_STD)

    def forward(self, pooled: torch.Tensor):
        h = self.fc(pooled.flatten(1))
        return self.cls(h), self.reg(h)


LIGHTHEAD_FC_MEAN_SQUARE = 0.02


class LightHeadRCNN(det.TwoStageDetector):
    parts = {"backbone": ("backbone",), "rpn": ("rpn",), "thin_map": ("thin",), "head": ("head",)}

    def __init__(
        self,
        num_classes: int = 80,
        input_size: tuple[int, int] = (512, 512),
        pre_nms_top_n: int = 6000,
        post_nms_top_n: int = 1000,
    ):
        super().__init__()
        self.input_size = tuple(input_size)
        self.num_classes = num_classes
        self.backbone = XceptionLike()
        self.anchor_sizes, self.anchor_ratios = ANCHOR_SIZES, ANCHOR_RATIOS
        self.rpn_stride, self.roi_scale, self.pooled = 16, 1.0 / 32, POOLED
        self.rpn = RPN(self.backbone.c4_channels, len(ANCHOR_SIZES) * len(ANCHOR_RATIOS))
        self.thin = LargeSeparableConv(self.backbone.c5_channels)
        self.head = RCNNHead(num_classes)
        self.proposals = det.ProposalLayer(pre_nms_top_n, post_nms_top_n, 0.7)
        self.postprocess = det.DetectionLayer(num_classes, score_thresh=0.05, nms_thresh=0.5)

    def features(self, x: torch.Tensor):
        c4, c5 = self.backbone.features(x)
        rpn_cls, rpn_reg = self.rpn(c4)
        return self.thin(c5), rpn_cls, rpn_reg

    def rcnn(self, pooled: torch.Tensor):
        return self.head(pooled)


def _build(num_classes: int = 80, input_size: tuple[int, int] = (512, 512)) -> LightHeadRCNN:
    return LightHeadRCNN(num_classes=num_classes, input_size=input_size)


register_model(
    ModelSpec(
        name="lighthead_rcnn",
        family="lighthead_rcnn",
        task="detect",
        builder=_build,
        input_size=(512, 512),  # see the module docstring
        stride=32,  # C5 (the thin map) at 1/32
        num_classes=80,
        outputs=det.STANDARD_OUTPUTS,
        description="Light-Head R-CNN, setting S (Xception-like backbone, large separable conv, "
        "PSRoIAlign 10x7x7, 2048-d fc)",
        class_names=COCO,
        export_wrapper=det.export_wrapper,
        raw_outputs=det.RAW_OUTPUTS,
    )
)
