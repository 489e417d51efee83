"""A model that calls a custom op no backend has: no ONNX translation, no decomposition, no lowering.

``lightdeploy check tests/unsupported_op_model.py:build --to T`` must name the op and the module that
calls it.  Loaded only through that file reference (the op is registered once per process).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.library.custom_op("lightdeploy_tests::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@double.register_fake
def _double_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Doubler(nn.Module):
    def forward(self, x):
        return double(x)


class UsesAnUnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.head = nn.Sequential(nn.ReLU(), Doubler())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.head(self.conv(x)).mean(dim=(2, 3)))


def build() -> nn.Module:
    return UsesAnUnknownOp()
