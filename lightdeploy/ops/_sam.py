"""SAM, ThunderNet's Spatial Attention Module: re-weight a feature map by a map learned from another.

Schema::

    SAM(rpn_channels, out_channels)(features [N, out_channels, H, W], guide [N, rpn_channels, H, W])
        = features * sigmoid(BN(conv1x1(guide)))        (conv without bias; BN then folds into it)

In ThunderNet, ``features`` is the CEM output and ``guide`` the RPN's hidden map, so the thin feature
map that PSRoIAlign reads is weighted by what the RPN found (Qin et al. 2019, eq. 1).

Not a custom op: plain modules (Conv, BN, Sigmoid, Mul).  After export and simplification it is
exactly Conv (BN folded), Sigmoid, Mul on every backend, so it needs no translation or decomposition.
"""

from __future__ import annotations

import torch
from torch import nn


class SAM(nn.Module):
    """Spatial Attention Module: ``features * sigmoid(BN(conv1x1(guide)))``."""

    def __init__(self, rpn_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(rpn_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return features * torch.sigmoid(self.bn(self.conv(guide)))
