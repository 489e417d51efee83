"""ThunderNet (Qin et al., ICCV 2019, arXiv 1903.11752): SNet + CEM + compressed RPN + SAM + light R-CNN.

Built as the paper's Figure 2 draws it (docs/models.md §4), with the official code's [O] details where the
paper is silent:

- **Backbone**: SNet49 / SNet146 / SNet535 from the zoo (``lightdeploy.models.snet``), C4 = stage3
  (stride 16, 20x20 at 320), C5 = the last stride-32 feature.  For SNet146/535 C5 is stage4 (they drop
  conv5).  **For SNet49, C5 is conv5's output (512 channels), not stage4's (240)**: SNet49 is the one
  backbone that keeps conv5 (compressed to 512, docs/models.md §4 design rules), so conv5 is its last
  stride-32 layer: taking it keeps "C5 = the backbone's final feature" uniform over the three, gives
  CEM's C5 and global branches the backbone's widest representation (512 vs 240 channels), and a
  conv5 left out of C5 would be dead weight in a detector (nothing would read it).
  ``SNet.features`` returns exactly that.
- **CEM** [P]/[O]: three 1x1 convs (with bias) to alpha*p*p = 245 channels on C4, C5 and GAP(C5);
  C5' upsampled 2x with **nearest** (to C4's size), C_glb broadcast; the three are **summed**.
- **Compressed RPN** [P]/[O]: dw5x5 (245) -BN-ReLU, 1x1 245 -> 256 -BN-ReLU (official code's BN/ReLU),
  then 1x1 objectness (one sigmoid logit per anchor, mmdet's RPN) and 1x1 deltas (4 per anchor).
  25 anchors per location: sizes {32, 64, 128, 256, 512} x ratios (h/w) {1/2, 3/4, 1, 4/3, 2} [S]/[O].
- **Proposals** (official test config [O]): top 2000 (nms_pre) by objectness, decode (stds 1), clip,
  NMS 0.7, keep **200** (max_per_img at test).
- **SAM** [P]/[O] (``lightdeploy.ops.SAM``): F_sam = F_cem * sigmoid(BN(conv1x1(F_rpn))), conv 256 -> 245 without
  bias; after export + simplification it is exactly Conv, Sigmoid, Mul (BN folded into the Conv).
- **PSRoIAlign** [O]: alpha = 5, p = 7, sampling ratio 2, spatial scale 1/16 -> 5x7x7 = 245 per RoI.
- **R-CNN subnet**: **one 1024-d fc** (+ReLU) as the paper's caption draws it [P], then the class
  (C + 1, 0 = background) and class-wise box (4C) layers.  The official 2022 mmdet config uses
  Shared2FCBBoxHead, i.e. **two** 1024-d fcs [O]; we follow the paper (lightdeploy defines models as
  their papers draw them); ``rcnn_fcs=2`` builds the official variant.
- **Post-processing**: class-wise decode (stds 0.1, 0.1, 0.2, 0.2 [O]), score threshold 0.05, NMS 0.5
  (plain greedy NMS; the official test config uses soft-NMS, which has no fixed-size ONNX form),
  K = 100 fixed-size outputs (docs/design.md#custom-ops).

Input 320x320 [P], 80 COCO classes by default.  Stride 32 (C5 must be half of C4 for the upsample).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lightdeploy.models import _detection as det
from lightdeploy.models.labels import COCO
from lightdeploy.models.registry import ModelSpec, register_alias, register_model
from lightdeploy.models.snet import KERNEL, SNet
from lightdeploy.ops import SAM

ALPHA, POOLED = 5, 7  # docs/models.md §4 PSRoIAlign: alpha = 5, p = 7 -> 245 channels
CEM_CHANNELS = ALPHA * POOLED * POOLED  # 245
RPN_CHANNELS = 256  # [P] compressed RPN: 5x5 depthwise + 1x1 conv to 256
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # [S]; official scales [2, 4, 8, 16, 32] x stride 16 [O]
ANCHOR_RATIOS = (0.5, 0.75, 1.0, 4 / 3, 2.0)  # [O]
FC_DIM = 1024  # [P] "R-CNN subnet with a 1024-d fc layer"
RPN_STRIDE = 16


class CEM(nn.Module):
    """Context Enhancement Module: 1x1(C4) + nearest-up(1x1(C5)) + 1x1(GAP(C5)), all to 245 channels."""

    def __init__(self, c4_channels: int, c5_channels: int, out_channels: int = CEM_CHANNELS):
        super().__init__()
        self.conv4 = nn.Conv2d(c4_channels, out_channels, 1, bias=True)
        self.conv5 = nn.Conv2d(c5_channels, out_channels, 1, bias=True)
        self.conv_glb = nn.Conv2d(c5_channels, out_channels, 1, bias=True)  # the paper's "fc layer"

    def forward(self, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.conv5(c5), size=(c4.shape[2], c4.shape[3]), mode="nearest")
        glb = self.conv_glb(c5.mean(dim=(2, 3), keepdim=True))
        return self.conv4(c4) + up + glb


class CompressedRPN(nn.Module):
    """dw5x5-BN-ReLU, 1x1 to 256-BN-ReLU (= F_rpn, also SAM's input), then objectness and deltas."""

    def __init__(self, in_channels: int = CEM_CHANNELS, mid: int = RPN_CHANNELS, num_anchors: int = 25):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, KERNEL, 1, KERNEL // 2, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
        )
        self.cls = nn.Conv2d(mid, num_anchors, 1)
        self.reg = nn.Conv2d(mid, 4 * num_anchors, 1)
        det.init_normal(self.cls, det.RPN_INIT_STD)
        det.init_normal(self.reg, det.RPN_INIT_STD)

    def forward(self, x: torch.Tensor):
        f_rpn = self.conv(x)
        return f_rpn, self.cls(f_rpn), self.reg(f_rpn)


class RCNNHead(nn.Module):
    """PSRoIAlign output [R, 5, 7, 7] -> flatten 245 -> fc 1024 (ReLU) [x fcs] -> class / box layers."""

    def __init__(self, num_classes: int, in_features: int = CEM_CHANNELS, fc_dim: int = FC_DIM, fcs: int = 1):
        super().__init__()
        layers, dim = [], in_features
        for _ in range(fcs):
            layers += [nn.Linear(dim, fc_dim), nn.ReLU(inplace=True)]
            dim = fc_dim
        self.fc = nn.Sequential(*layers)
        self.cls = nn.Linear(dim, num_classes + 1)
        self.reg = nn.Linear(dim, 4 * num_classes)
        # E[h^2] = 0.019 measured for SNet146 at 320 on the sample photographs (one fc)
        det.init_untrained_classifier(self.cls, input_mean_square=0.019)
        det.init_normal(self.reg, det.BOX_INIT_STD)

    def forward(self, pooled: torch.Tensor):
        h = self.fc(pooled.flatten(1))
        return self.cls(h), self.reg(h)


class ThunderNet(det.TwoStageDetector):
    parts = {"backbone": ("backbone",), "cem": ("cem",), "rpn": ("rpn",), "sam": ("sam",), "head": ("head",)}

    def __init__(
        self,
        depth: int = 146,
        num_classes: int = 80,
        input_size: tuple[int, int] = (320, 320),
        rcnn_fcs: int = 1,
        pre_nms_top_n: int = 2000,
        post_nms_top_n: int = 200,
    ):
        super().__init__()
        self.input_size = tuple(input_size)
        self.num_classes = num_classes
        backbone = SNet(depth=depth)
        backbone.fc = nn.Identity()  # the classifier is not part of the detector
        self.backbone = backbone
        self.cem = CEM(backbone.c4_channels, backbone.c5_channels)
        self.anchor_sizes, self.anchor_ratios = ANCHOR_SIZES, ANCHOR_RATIOS
        self.rpn_stride, self.roi_scale, self.pooled = RPN_STRIDE, 1.0 / RPN_STRIDE, POOLED
        self.rpn = CompressedRPN(num_anchors=len(ANCHOR_SIZES) * len(ANCHOR_RATIOS))
        self.sam = SAM(RPN_CHANNELS, CEM_CHANNELS)  # F_sam = F_cem * sigmoid(BN(conv1x1(F_rpn)))
        self.head = RCNNHead(num_classes, fcs=rcnn_fcs)
        # official test config [O]: nms_pre 2000, NMS 0.7, max_per_img 200; R-CNN: 0.05, 0.5, 100
        self.proposals = det.ProposalLayer(pre_nms_top_n, post_nms_top_n, 0.7)
        self.postprocess = det.DetectionLayer(num_classes, score_thresh=0.05, nms_thresh=0.5)

    def features(self, x: torch.Tensor):
        c4, c5 = self.backbone.features(x)
        f_cem = self.cem(c4, c5)
        f_rpn, rpn_cls, rpn_reg = self.rpn(f_cem)
        return self.sam(f_cem, f_rpn), rpn_cls, rpn_reg

    def rcnn(self, pooled: torch.Tensor):
        return self.head(pooled)


def _build(num_classes: int = 80, depth: int = 146, input_size: tuple[int, int] = (320, 320)) -> ThunderNet:
    return ThunderNet(depth=depth, num_classes=num_classes, input_size=input_size)


for _depth in (49, 146, 535):
    register_model(
        ModelSpec(
            name=f"thundernet_snet{_depth}",
            family="thundernet",
            task="detect",
            builder=_build,
            builder_kwargs={"depth": _depth},
            input_size=(320, 320),  # [P] Figure 2 caption
            # C4 at 1/16, C5 at 1/32 and CEM upsamples C5 2x onto C4: H and W must be multiples of 32
            # (the nearest upsample targets C4's size, but an odd C4 would misalign anchors and C5 cells).
            stride=32,
            num_classes=80,
            outputs=det.STANDARD_OUTPUTS,
            description=f"ThunderNet with SNet{_depth} (CEM, compressed RPN, SAM, PSRoIAlign, 1024-d fc)",
            class_names=COCO,
            export_wrapper=det.export_wrapper,
            raw_outputs=det.RAW_OUTPUTS,
        )
    )
register_alias("thundernet", "thundernet_snet146")
