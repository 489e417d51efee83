"""Params and MACs, counted with torch's FlopCounterMode (conv and linear multiply-adds)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Learnable parameters, BN affine included (the [C] convention of docs/models.md)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int], *, by_module: bool = False):
    """Multiply-adds of one batch-1 forward pass at ``input_size`` (FlopCounterMode counts 2 per MAC).

    With ``by_module=True`` also returns {module path: MACs} for the top-level children.
    """
    device = next(model.parameters()).device  # the meta device counts without computing
    x = torch.zeros(1, 3, *input_size, device=device)
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        model(x)
    total = counter.get_total_flops() // 2
    if not by_module:
        return total
    per = {k: sum(v.values()) // 2 for k, v in counter.get_flop_counts().items()}
    return total, per
