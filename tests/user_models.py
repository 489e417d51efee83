"""Models a user would write, defined only here: a small classifier and a small two-stage detector built
from ``lightdeploy.ops``.  The tests export them as a user does (``export_module``, and the CLI's
``tests/user_models.py:tiny_classifier`` form), never through the registry.

Both are tiny on purpose (64x64 input): the detector's unrolled NMS costs TFLite conversion time per
box, so it keeps 192 anchors, 16 proposals and 10 detections.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lightdeploy.ops import SAM, channel_shuffle, nms_fixed, ps_roi_align


def conv_bn_relu(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ShuffleBlock(nn.Module):
    """A grouped conv whose groups then trade channels (lightdeploy.ops.channel_shuffle)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = conv_bn_relu(cin, cout, stride, groups=2)

    def forward(self, x):
        return channel_shuffle(self.conv(x), 2)


class TinyClassifier(nn.Module):
    """Three stride-2 stages (one with a channel shuffle), global average pool, linear head."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(3, 16, 2), ShuffleBlock(16, 32, 2), conv_bn_relu(32, 32, 2))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def tiny_classifier(num_classes: int = 5) -> nn.Module:
    """The factory: what ``lightdeploy export tests/user_models.py:tiny_classifier`` calls."""
    return TinyClassifier(num_classes)


# ------------------------------------------------------------------------------------- the detector
def decode(deltas, ref, stds=(1.0, 1.0, 1.0, 1.0)):
    """Faster R-CNN deltas (dx, dy, dw, dh) * stds applied to reference boxes (x1, y1, x2, y2)."""
    w, h = ref[..., 2] - ref[..., 0], ref[..., 3] - ref[..., 1]
    cx, cy = ref[..., 0] + 0.5 * w, ref[..., 1] + 0.5 * h
    dx, dy, dw, dh = (deltas[..., i] * stds[i] for i in range(4))
    pw, ph = torch.exp(dw.clamp(max=4.0)) * w, torch.exp(dh.clamp(max=4.0)) * h
    return torch.stack(
        [cx + dx * w - 0.5 * pw, cy + dy * h - 0.5 * ph, cx + dx * w + 0.5 * pw, cy + dy * h + 0.5 * ph], -1
    )


def clip(boxes, height: int, width: int):
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], -1)


class TinyTwoStage(nn.Module):
    """Backbone (stride 8) -> RPN -> proposals (``nms_fixed``) -> SAM-weighted thin map ->
    ``ps_roi_align`` -> R-CNN head -> class-aware ``nms_fixed`` -> the detect contract, as a dict."""

    stride, anchor_sizes, pooled, alpha = 8, (16.0, 32.0, 48.0), 3, 4

    def __init__(self, num_classes: int = 3, input_size=(64, 64), proposals: int = 16, detections: int = 10):
        super().__init__()
        self.num_classes, self.input_size = num_classes, tuple(input_size)
        self.proposals, self.detections = proposals, detections
        a, thin = len(self.anchor_sizes), self.alpha * self.pooled * self.pooled
        self.backbone = nn.Sequential(conv_bn_relu(3, 16, 2), ShuffleBlock(16, 32, 2), conv_bn_relu(32, 48, 2))
        self.rpn = conv_bn_relu(48, 32)
        self.rpn_cls, self.rpn_reg = nn.Conv2d(32, a, 1), nn.Conv2d(32, 4 * a, 1)
        self.thin, self.sam = nn.Conv2d(48, thin, 1), SAM(32, thin)
        self.fc = nn.Linear(thin, 64)
        self.cls, self.reg = nn.Linear(64, num_classes + 1), nn.Linear(64, 4 * num_classes)
        # Detection heads' usual init; the class layer's wide one gives untrained logits a std of ~2.5
        # (its input's rms is ~0.06), so detections have distinct scores and labels, as a trained head's.
        for layer, std in ((self.rpn_cls, 0.01), (self.rpn_reg, 0.01), (self.reg, 0.001), (self.cls, 5.0)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        self.register_buffer("anchors", self._anchors(*self.input_size), persistent=False)

    def _anchors(self, height: int, width: int) -> torch.Tensor:
        """[h * w * A, 4] square anchors centred on each feature cell, location-major."""
        ys = (torch.arange(height // self.stride) + 0.5) * self.stride
        xs = (torch.arange(width // self.stride) + 0.5) * self.stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        half = torch.tensor(self.anchor_sizes)[None, :, None] / 2 * torch.tensor([-1.0, -1.0, 1.0, 1.0])
        return (centres + half).reshape(-1, 4)

    def forward(self, x):
        b, _, h, w = x.shape
        features = self.backbone(x)
        hidden = self.rpn(features)
        logits = self.rpn_cls(hidden).permute(0, 2, 3, 1).reshape(b, -1)
        deltas = self.rpn_reg(hidden).permute(0, 2, 3, 1).reshape(b, -1, 4)
        thin = self.sam(self.thin(features), hidden)
        per_image = [self._detect(thin[i : i + 1], logits[i], deltas[i], h, w) for i in range(b)]
        names = ("boxes", "scores", "labels", "num_detections")
        return {name: torch.stack(values) for name, values in zip(names, zip(*per_image))}

    def _detect(self, thin, logits, deltas, h: int, w: int):
        top, idx = logits.topk(min(64, logits.shape[0]))
        boxes = clip(decode(deltas[idx], self.anchors[idx]), h, w)
        keep, kept = nms_fixed(boxes, top, 0.7, self.proposals)
        rois = boxes[keep.clamp(min=0)]  # free slots repeat the best proposal, masked below
        valid = torch.arange(self.proposals) < kept
        pooled = ps_roi_align(
            thin, torch.cat([torch.zeros_like(rois[:, :1]), rois], 1), self.pooled, 1 / self.stride, 2
        )
        hidden = F.relu(self.fc(pooled.flatten(1)))
        c = self.num_classes
        logp = F.log_softmax(self.cls(hidden), -1)[:, 1:]  # column 0 is the background
        logp = torch.where(valid[:, None], logp, torch.full_like(logp, -1e4))
        cand = clip(
            decode(self.reg(hidden).reshape(-1, c, 4), rois[:, None].expand(-1, c, -1), (0.1, 0.1, 0.2, 0.2)), h, w
        )
        score, idx = logp.reshape(-1).topk(logp.numel())
        cand, labels = cand.reshape(-1, 4)[idx], idx % c
        # class-aware NMS: each class's boxes shifted beyond the image, so classes never overlap
        keep, kept = nms_fixed(cand + (labels * (max(h, w) + 1)).to(cand.dtype)[:, None], score, 0.5, self.detections)
        slot = keep.clamp(min=0)
        ok = (torch.arange(self.detections) < kept) & (score[slot] >= math.log(0.05))
        return (
            torch.where(ok[:, None], cand[slot], torch.zeros_like(cand[slot])),
            torch.where(ok, score[slot].exp(), torch.zeros_like(score[slot])),
            torch.where(ok, labels[slot], torch.full_like(labels[slot], -1)),
            ok.to(torch.int64).sum(),
        )


def tiny_detector(num_classes: int = 3, input_size=(64, 64)) -> nn.Module:
    """The factory: anchors are laid out for ``input_size`` (lightdeploy passes --input-size)."""
    return TinyTwoStage(num_classes, input_size)
