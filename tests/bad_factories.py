"""Factories that get things wrong, each in one way a user might (tests/test_own_model.py)."""

from __future__ import annotations

import torch
from torch import nn
from user_models import TinyClassifier, TinyTwoStage


def returns_a_state_dict():
    return TinyClassifier().state_dict()


def needs_arguments(depth, width=2):
    return TinyClassifier()


def raises():
    raise RuntimeError("checkpoint server unreachable")


class FloatLabels(nn.Module):
    """A detector whose labels are float and which forgot num_detections."""

    def __init__(self):
        super().__init__()
        self.detector = TinyTwoStage()

    def forward(self, x):
        out = self.detector(x)
        return out["boxes"], out["scores"], out["labels"].float()


def float_labels_detector():
    return FloatLabels()


class ListOfDicts(nn.Module):
    """torchvision's detection format: one dict per image, variable length."""

    def forward(self, x):
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]


def torchvision_style_detector():
    return ListOfDicts()


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = TinyClassifier()

    def forward(self, x):
        logits = self.model(x)
        return logits, logits.softmax(-1)


def unnamed_extra_output():
    return TwoHeads()
