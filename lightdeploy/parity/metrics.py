"""Comparing artifact outputs with eager outputs: tensor metrics and task metrics, as ``Check``s.

Comparing is separate from running (``gate.py`` runs): every function here takes numpy arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lightdeploy.numerics import cosine
from lightdeploy.parity.tolerances import Tolerance

# fp16/int8 top-1 is judged only where eager's top-1 leads top-2 by this many standard deviations of
# that input's logits: closer calls are coin flips that reduced precision may fairly turn (the report
# counts them).  fp32 judges every input: top-1 must be identical (docs/design.md#parity).
CLEAR_MARGIN_STD = 0.25


@dataclass
class Check:
    subject: str  # an output name or "task"
    metric: str
    value: float
    limit: float
    op: str  # ">=" or "<="
    passed: bool = False

    def __post_init__(self):
        v = float(self.value)
        self.passed = bool(np.isfinite(v) and (v >= self.limit if self.op == ">=" else v <= self.limit))

    def as_dict(self) -> dict:
        return asdict(self)


def tensor_stats(ref: list[np.ndarray], out: list[np.ndarray]) -> dict:
    """max abs error, max relative error (to max |ref|), worst per-input cosine, max |ref|."""
    ref_max = max(float(np.abs(r).max()) if r.size else 0.0 for r in ref)
    max_abs = max(float(np.abs(o.astype(np.float64) - r).max()) if r.size else 0.0 for r, o in zip(ref, out))
    cosines = [cosine(r, o) for r, o in zip(ref, out) if r.size]
    return {
        "max_abs": max_abs,
        "max_rel": max_abs / ref_max if ref_max else 0.0,
        "cosine": min(cosines) if cosines else 1.0,
        "ref_max_abs": ref_max,
    }


# An fp32 artifact's max-abs limit never falls below this many times eager float32's own distance
# from the float64 reference (see ``gate.compare``; docs/measurements.md#noise-floor).
NOISE_FLOOR_FACTOR = 2.0
# Outputs that are ranked, fixed-size lists: compared slot by slot they swap on float noise, so only
# the task metric judges them (their tensor stats are still reported).
TASK_JUDGED_OUTPUTS = {"detect": ("boxes", "scores", "labels", "num_detections")}


def tensor_checks(name: str, stats: dict, tol: Tolerance, noise_factor: float = NOISE_FLOOR_FACTOR) -> list[Check]:
    checks = [Check(name, "cosine", stats["cosine"], tol.cosine_min, ">=")]
    if tol.abs_rel is not None:
        limit = tol.abs_rel * stats["ref_max_abs"] + tol.abs_floor
        floor = stats.get("eager_fp32_max_abs")
        metric = "max_abs"
        if floor is not None and noise_factor * floor > limit:
            limit, metric = noise_factor * floor, "max_abs (limit: 2x eager fp32 noise)"
        checks.append(Check(name, metric, stats["max_abs"], limit, "<="))
    return checks


# ------------------------------------------------------------------------------------ task metrics
def classify_checks(ref: dict, out: dict, tol: Tolerance, output_names: list[str]) -> tuple[list[Check], dict]:
    """Top-1 agreement (all inputs at fp32; clear-margin inputs at fp16/int8) and top-5 overlap."""
    name = output_names[0]
    r = np.concatenate([x.reshape(-1, x.shape[-1]) for x in ref[name]])
    o = np.concatenate([x.reshape(-1, x.shape[-1]) for x in out[name]])
    top1_r, top1_o = r.argmax(1), o.argmax(1)
    agree = top1_r == top1_o
    srt = np.sort(r, axis=1)
    clear = (srt[:, -1] - srt[:, -2]) >= CLEAR_MARGIN_STD * r.std(axis=1)
    judged = clear if tol.precision in ("fp16", "int8") else np.ones_like(agree)
    value = float(agree[judged].mean()) if judged.any() else 1.0
    k = min(5, r.shape[1])
    top5 = np.mean([len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k for a, b in zip(r, o)])
    info = {
        "top1_agreement_all": float(agree.mean()),
        "judged_inputs": int(judged.sum()),
        "near_ties": int((~clear).sum()),
        "inputs": int(len(agree)),
        "top5_overlap": float(top5),
        "one_miss": 1.0 / int(judged.sum()) if judged.any() else None,  # what one disagreement costs the row
    }
    return [Check("task", "top1_agreement", value, tol.top1_agreement_min, ">=")], info


# task -> its checks: a function, or "module:function" imported on first use (one module per task).
TASK_CHECKS = {
    "classify": classify_checks,
    "segment": "lightdeploy.parity.segmentation:segment_checks",
    "detect": "lightdeploy.parity.detection:detect_checks",
}


def task_checks_for(task: str):
    entry = TASK_CHECKS.get(task)
    if isinstance(entry, str):
        import importlib

        module, fn = entry.split(":")
        entry = TASK_CHECKS[task] = getattr(importlib.import_module(module), fn)
    return entry
