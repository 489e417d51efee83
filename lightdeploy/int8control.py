"""INT8 accuracy control: measure a quantised model against eager PyTorch, keep its most sensitive
modules in float when it misses the int8 row.

Every INT8 exporter (OpenVINO, TFLite, the TensorRT QDQ model) quantises with its shipped settings,
then measures the gate's own tensor metric, the worst logits cosine, on a *validation set* of its own
shaped like the gate's int8 cosine inputs: the bundled photographs mirrored (the gate judges them
unmirrored; the calibration set has them unmirrored and as random crops).  No noise tensors: the int8
row does not gate them (parity/inputs.py), and chasing them kept layers float that real images do not
need (docs/measurements.md#int8-noise).  Zoomed crops ranked range settings
differently from the gate's whole photographs (docs/measurements.md#int8-trained).  When the
worst cosine is under ``TARGET_COSINE``, the exporter's own candidates are measured (other range
estimators; then each quantised module kept in float alone), and the most sensitive modules are kept
in float greedily, up to ``MAX_FLOAT_MODULES``.  Nothing here knows whether a model is trained: a
model that meets the target with the shipped settings is exported exactly as before.  The manifest
records the measurements and which modules stayed float (docs/design.md#calibration).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lightdeploy.logs import Count
from lightdeploy.numerics import cosine

# The int8 row's cosine (0.98, parity/tolerances.py) plus a margin for the gate's inputs not being the
# validation inputs: layers chosen for their validation cosine score lower on the gate's (by up to 0.007,
# docs/measurements.md#int8-trained).  tests/test_int8control.py keeps it above the row.
TARGET_COSINE = 0.99
# At most this many modules stay float: a fallback that needs more is not an int8 artifact any more.
MAX_FLOAT_MODULES = 4
CONTROLLED_TASKS = ("classify", "segment")  # logits outputs; detections are judged by box F1 only

Run = Callable[[np.ndarray], Sequence[np.ndarray]]  # one input batch -> the outputs, in order


@dataclass
class Validation:
    inputs: list[np.ndarray]  # as the artifact takes them (batched, layout)
    names: list[str]
    reference: list[list[np.ndarray]]  # eager float32 outputs per input
    # The outputs scored, by position: the floating-point ones, as the gate's cosine takes them.  A class
    # map or label output is judged by the task metric; its cosine measures nothing (a segmenter's mask
    # scored 0.96 where its logits scored 0.9997, and accuracy control chased it; measurements.md#int8-noise).
    judged: tuple[int, ...] | None = None  # None: every output

    def scores(self, run: Run, indices: Sequence[int] | None = None) -> list[float]:
        """Worst cosine over the judged outputs, per input (``indices``: a subset)."""
        out = []
        for i in range(len(self.inputs)) if indices is None else indices:
            got, ref = run(self.inputs[i]), self.reference[i]
            judged = range(len(ref)) if self.judged is None else self.judged
            out.append(min(cosine(got[k], ref[k]) for k in judged))
        return out

    def worst(self, run: Run) -> float:
        return min(self.scores(run))


def controlled(job) -> bool:
    return job.spec.task in CONTROLLED_TASKS


def validation_set(job) -> Validation:
    """Mirrored photographs for ``job``, with eager float32 outputs as the reference."""
    import torch

    from lightdeploy.samples import preprocessed, sample_photographs

    pre = job.preprocessing()
    mirrored = {f"{name} mirrored": np.ascontiguousarray(img[:, ::-1]) for name, img in sample_photographs().items()}
    arrays = dict(preprocessed(mirrored, pre))
    batch, nhwc = job.options.batch, job.options.nhwc
    inputs = [np.repeat(a, batch, axis=0) for a in arrays.values()]
    reference, floating = [], ()
    with torch.no_grad():
        for x in inputs:
            t = torch.from_numpy(x)
            out = job.model(t.permute(0, 3, 1, 2) if nhwc else t)
            out = out if isinstance(out, (tuple, list)) else (out,)
            floating = tuple(k for k, o in enumerate(out) if o.is_floating_point())
            reference.append([o.float().numpy() for o in out])
    return Validation(inputs, list(arrays), reference, judged=floating)


def restore_float(
    measure: Callable[[tuple[str, ...]], float],
    candidates: Sequence[str],
    start: float,
    *,
    target: float = TARGET_COSINE,
    budget: int = MAX_FLOAT_MODULES,
    rerank: bool = False,
    count: Count | None = None,
) -> dict:
    """Keep modules float greedily, most sensitive first, until ``measure`` reaches ``target``.

    ``measure(names)``: the worst validation cosine with those modules kept float.  Sensitivity is the
    worst cosine with one module alone kept float (the quantised model's ``start`` is the baseline).
    ``rerank``: each step keeps the module that measures best together with those already kept (costs
    a pass over the candidates per step) instead of the next most sensitive alone; single gains need
    not add up (docs/measurements.md#int8-trained).  Returns the decision for the manifest:
    ``float_modules`` (the best set measured, possibly empty), its ``worst_cosine``, whether the target
    was ``reached``, and the measurements.  ``count(done, total, what)``: progress over the candidates.
    """
    single = {}
    for done, c in enumerate(candidates, 1):
        single[c] = measure((c,))
        if count:
            count(done, len(candidates), "layers measured in float")
    if rerank:
        return _reranked(measure, candidates, start, single, target, budget)
    ranked = sorted(single, key=single.get, reverse=True)
    best, best_score = (), start
    chosen: tuple[str, ...] = ()
    steps = []
    for name in ranked[:budget]:
        if single[name] <= start and chosen:
            break  # the rest do not help on their own
        chosen = (*chosen, name)
        score = single[name] if len(chosen) == 1 else measure(chosen)
        steps.append({"float": list(chosen), "worst_cosine": round(score, 4)})
        if score > best_score:
            best, best_score = chosen, score
        if score >= target:
            break
    return _restored(best, best_score, target, single, steps)


def _reranked(measure, candidates, start: float, single: dict, target: float, budget: int) -> dict:
    chosen: tuple[str, ...] = ()
    score, steps = start, []
    while len(chosen) < budget and score < target:
        options = {c: single[c] if not chosen else measure((*chosen, c)) for c in candidates if c not in chosen}
        best = max(options, key=options.get, default=None)
        if best is None or options[best] <= score:
            break
        chosen, score = (*chosen, best), options[best]
        steps.append({"float": list(chosen), "worst_cosine": round(score, 4)})
    return {**_restored(chosen, score, target, single, steps), "reranked": True}


def _restored(chosen, score: float, target: float, single: dict, steps: list) -> dict:
    """The decision for the manifest: the float modules kept, their score, and what was measured."""
    ranked = sorted(single, key=single.get, reverse=True)
    return {
        "float_modules": list(chosen),
        "worst_cosine": round(score, 4),
        "reached": score >= target,
        "sensitivity": {n: round(single[n], 4) for n in ranked[:8]},
        "steps": steps,
    }


def decision(start: float, **facts) -> dict:
    """The manifest entry of a quantisation that was measured (``facts``: what was tried and chosen)."""
    return {
        "metric": "worst logits cosine vs eager float32 on the validation set",
        "validation": "the bundled photographs mirrored",
        "target": TARGET_COSINE,
        "shipped_settings": round(start, 4),
        **facts,
    }
