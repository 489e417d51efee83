"""The output contract of each task: what a model must return to be exported and gated.

A model takes one image batch ``[B, 3, H, W]`` float32 (RGB, normalised by its preprocessing) and
returns, as a tuple in this order or as a dict with these keys,

- classify: ``logits [B, C]`` float32;
- detect: ``boxes [B, K, 4]`` float32 (x1, y1, x2, y2 in input pixels), ``scores [B, K]`` float32
  (decreasing), ``labels [B, K]`` int64, ``num_detections [B]`` int64: the first ``num_detections``
  slots are valid, the rest padding (score 0, label -1);
- segment: ``logits [B, C, H', W']`` float32, optionally followed by ``mask [B, H', W']`` int64.

These are the outputs the runtimes' task wrappers read (``runtimes/classify.py``, ``detect.py``,
``segment.py``) and the gate's task metrics judge.  Further outputs may follow the task's own when
they are all named; floating ones are judged as tensors.  ``check_outputs`` lists every way a model's
outputs miss the contract in one UsageError.
"""

from __future__ import annotations

import torch
from torch import nn

from lightdeploy.errors import UsageError
from lightdeploy.models._detection import STANDARD_OUTPUTS

TASKS = ("classify", "detect", "segment")
# (name, rank, dtype) of each output a task requires, in order; "segment"'s mask is optional.
CONTRACT = {
    "classify": (("logits", 2, torch.float32),),
    # boxes, scores, labels, num_detections: the zoo's detectors end in exactly these
    "detect": tuple(zip(STANDARD_OUTPUTS, (3, 2, 2, 1), (torch.float32, torch.float32, torch.int64, torch.int64))),
    "segment": (("logits", 4, torch.float32), ("mask", 3, torch.int64)),
}
REQUIRED = {"classify": 1, "detect": 4, "segment": 1}  # how many of CONTRACT[task] must be there
CONTRACT_TEXT = {
    "classify": "logits [B, C] float32",
    "detect": "boxes [B, K, 4] float32, scores [B, K] float32, labels [B, K] int64, num_detections [B] int64",
    "segment": "logits [B, C, H, W] float32, optionally mask [B, H, W] int64",
}


def check_outputs(task: str, result, outputs) -> tuple[tuple[str, ...], str]:
    """The output names, and how the model returns them ("tensor", "tuple" or "dict"); every way the
    outputs miss the contract is listed in one UsageError."""
    expected = CONTRACT[task]
    required = REQUIRED[task]
    if isinstance(result, dict):
        returns, values = "dict", result
        default = tuple(n for i, (n, _, _) in enumerate(expected) if i < required or n in result)
        names = tuple(outputs) if outputs else default
    elif torch.is_tensor(result) or isinstance(result, (tuple, list)):
        items = [result] if torch.is_tensor(result) else list(result)
        returns = "tensor" if torch.is_tensor(result) else "tuple"
        if not all(torch.is_tensor(v) for v in items):
            kinds = ", ".join(sorted({type(v).__name__ for v in items}))
            hint = (
                " (per-image detections of any length, as torchvision's detectors return, have no fixed shape: "
                "pad them to K slots, e.g. with lightdeploy.ops.nms_fixed)"
                if task == "detect"
                else ""
            )
            raise _contract_error(task, [f"the model returns a {type(result).__name__} of {kinds}{hint}"])
        names = tuple(outputs) if outputs else tuple(n for n, _, _ in expected[: len(items)])
        if len(items) != len(names):
            problem = f"the model returns {len(items)} outputs for {len(names)} names ({', '.join(names)})"
            hint = "" if outputs else "; name every output, the task's first, with export_module(..., outputs=(...))"
            raise _contract_error(task, [problem + hint])
        values = dict(zip(names, items))
    else:
        raise _contract_error(task, [f"the model returns a {type(result).__name__}"])
    problems = []
    if len(set(names)) != len(names):
        problems.append(f"output names repeat: {', '.join(names)}")
    for i, (want, rank, dtype) in enumerate(expected):
        if i >= required and (i >= len(names) or names[i] != want):
            break  # an optional output (segment's mask) that is not there
        if i >= len(names) or names[i] != want:
            problems.append(f"{want} is missing" + (f" (output {i} is named {names[i]!r})" if i < len(names) else ""))
            continue
        value = values.get(want)
        if not torch.is_tensor(value):
            problems.append(f"{want} is {'missing' if value is None else type(value).__name__}, not a tensor")
        elif value.dim() != rank or value.dtype != dtype:
            problems.append(f"{want} is {value.dtype} {list(value.shape)}, the contract says {dtype} of rank {rank}")
    contract_names = {n for n, _, _ in expected}
    for n in names:
        if n not in contract_names and not torch.is_tensor(values.get(n)):
            problems.append(f"output {n!r} is {'missing' if n not in values else type(values[n]).__name__}")
    if not problems:
        problems = _shape_problems(task, [values[n] for n in names])
    if problems:
        raise _contract_error(task, problems)
    return names, returns


def _shape_problems(task: str, values: list[torch.Tensor]) -> list[str]:
    batch = values[0].shape[0]
    if task == "detect":
        boxes, scores, labels, num = values[:4]
        k = boxes.shape[1]
        bad = [
            (n, list(v.shape), want)
            for n, v, want in (
                ("boxes", boxes, [batch, k, 4]),
                ("scores", scores, [batch, k]),
                ("labels", labels, [batch, k]),
                ("num_detections", num, [batch]),
            )
            if list(v.shape) != want
        ]
        return [f"{n} has shape {got}, expected {want} (B = {batch}, K = {k})" for n, got, want in bad]
    if task == "segment" and len(values) > 1 and list(values[1].shape) != [batch, *values[0].shape[2:]]:
        return [f"mask has shape {list(values[1].shape)}, expected {[batch, *values[0].shape[2:]]} (logits' B, H, W)"]
    return []


def _contract_error(task: str, problems: list[str]) -> UsageError:
    return UsageError(
        f"The model's outputs do not meet the {task} contract: {'; '.join(problems)}. A {task} model returns "
        f"{CONTRACT_TEXT[task]}, in that order or as a dict with those keys (README, 'Your own model')."
    )


def classes(task: str, first: torch.Tensor, module: nn.Module, num_classes, class_names):
    """(class count, class names or None): from the logits for classify / segment; for detect from the
    names, ``num_classes`` or the module's ``num_classes`` attribute."""
    names = tuple(str(n) for n in class_names) if class_names is not None else None
    if task in ("classify", "segment"):
        count = int(first.shape[1])
    else:
        count = num_classes or (len(names) if names else None) or getattr(module, "num_classes", None)
        if not isinstance(count, int) or count < 1:
            raise UsageError(
                "A detector's class count cannot be read from its outputs: pass class_names=[...] or "
                "num_classes=N (--num-classes N), or give the module a num_classes attribute."
            )
    if names is not None and len(names) != count:
        raise UsageError(f"class_names has {len(names)} names for {count} classes.")
    return count, names
