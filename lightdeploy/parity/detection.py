"""Detection parity: the artifact's final detections against eager's, matched by IoU.

The detectors end in fixed-size outputs (``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]``,
``num_detections [B]``; docs/design.md#custom-ops).  Per image, the first ``num_detections`` slots are compared:

- pairs: greedy, eager detections by decreasing score, each taking the unmatched artifact detection
  of the **same label** with the highest IoU, if that IoU >= ``PAIR_IOU``;
- fp32 (``tol.box_min`` = 0.99): ``box_min_iou`` = the smallest IoU over every judged detection of
  either side, an unpaired one counting 0: every eager detection has a same-label artifact match
  with IoU >= 0.99, and the artifact has no extra detection;
- fp16 / int8 (``tol.box_min`` = 0.97 / 0.85): ``box_match_f1`` = 2 * pairs / (eager + artifact
  detections), over every detection: near-ties are counted but not excused (an unpaired one counts
  against the F1), so no tie allowance is needed.  The F1 over the non-tied detections is reported
  as ``box_match_f1_untied``.
- reported, not judged: match rate, mean/min IoU of the pairs, max score difference, label agreement
  of boxes paired by IoU alone, detection counts.

**Near-ties.**  Random weights give near-tied scores where NMS may choose differently on float
noise.  Those are not judged (and not hidden either: ``info["near_ties"]`` counts them) instead of
loosening the tolerance.  A detection d left unpaired (or paired below the judged IoU) is a
near-tie when

- its score is within max(``TIE_SCORE_REL`` (1e-5) relative, twice the largest score difference
  measured on the well-paired detections, capped at ``TIE_SCORE_ABS_CAP``) of another detection's
  score in the same image (either side; not its own pair or twin): the visiting order of NMS, or the
  cut at K, may flip between the two on that much noise; or
- its IoU with another same-label detection of the same image (either side) is within
  ``TIE_IOU`` (1e-4) of an NMS threshold (``NMS_THRESHOLDS``): suppression may flip; or
- it overlaps (same label, IoU above the NMS threshold) a detection that is a near-tie itself:
  when the tied box flips, what it suppressed flips with it (iterated to a fixed point); or
- its side is full (K detections) and it is among the last t unpaired slots, where t is the
  number of near-tie detections the other side gained: each of those pushed one box off at K.

A detection paired at or above the judged IoU is always judged, near-tie or not.  At fp32, detections
that are near-ties are excluded from judgement (both members of a badly paired pair) and counted; a
second check bounds them to max(``MIN_TIE_ALLOWANCE``, ``MAX_TIE_FRACTION`` of all detections).  At
fp16 / int8 the F1 counts every detection instead: the score noise of reduced precision makes the
tie band wide (up to ``TIE_SCORE_ABS_CAP``), and on random-weight detectors 20-27% of all
detections then fall inside it (measured at int8, ThunderNet 320x320), though most still pair.
Limitation: from the final outputs alone, a box moved by a bug while keeping its score within the tie band of its partner
looks exactly like an NMS flip; one such box is excused (and counted), many are not, and the
raw-head tensors (``--raw-heads``: rcnn_deltas) judge box regressions directly.
"""

from __future__ import annotations

import numpy as np

from lightdeploy.parity.metrics import Check
from lightdeploy.parity.tolerances import Tolerance

PAIR_IOU = 0.5  # a detection is paired with an artifact detection at IoU >= this (same label)
TIE_SCORE_REL = 1e-5
TIE_SCORE_ABS_CAP = 1e-3  # the measured-noise score band for ties never exceeds this
TIE_IOU = 1e-4
MAX_TIE_FRACTION = 0.05  # near-ties may excuse at most this share of all detections (both sides)
MIN_TIE_ALLOWANCE = 2  # ... or this many (one flip = two detections), whichever is more
NMS_THRESHOLDS = (0.5,)  # the detectors' final class-wise NMS (ThunderNet, Light-Head R-CNN)
PIXEL_PAD = 0.5  # judged IoU is of boxes grown by half a pixel on each side (see iou_matrix)


def iou_matrix(a: np.ndarray, b: np.ndarray, pad: float | None = None) -> np.ndarray:
    """[n, 4] x [m, 4] -> [n, m] IoU in float64 (x1, y1, x2, y2) of the boxes grown by ``pad`` px.

    Boxes are in pixels; growing every side by PIXEL_PAD (0.5 px) gives each box an extent of at
    least one pixel, so a box clipped to a sliver (or to zero area) at an image edge does not make
    the IoU ill-conditioned: 0.02 px of float noise on a 0.05 px-tall box is not a different box.
    For boxes of 10 px or more the padding moves the IoU by under 10% of its distance to 1.
    """
    pad = PIXEL_PAD if pad is None else pad
    a = a.astype(np.float64)[:, None, :] + np.array([-pad, -pad, pad, pad])
    b = b.astype(np.float64)[None, :, :] + np.array([-pad, -pad, pad, pad])
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def split_images(outputs: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[(boxes [n, 4], scores [n], labels [n])] per image, the valid slots only."""
    images = []
    for boxes, scores, labels, nums in zip(
        outputs["boxes"], outputs["scores"], outputs["labels"], outputs["num_detections"]
    ):
        nums = np.asarray(nums).reshape(-1)
        for b in range(boxes.shape[0]):
            n = int(nums[b])
            images.append(
                (
                    np.asarray(boxes[b][:n], np.float64),
                    np.asarray(scores[b][:n], np.float64),
                    np.asarray(labels[b][:n]).astype(np.int64),
                )
            )
    return images


def pair(ref, out) -> list[tuple[int, int, float]]:
    """Greedy same-label pairs (eager index, artifact index, IoU), eager by decreasing score."""
    rb, rs, rl = ref
    ob, _, ol = out
    if not len(rb) or not len(ob):
        return []
    ious = iou_matrix(rb, ob)
    ious[rl[:, None] != ol[None, :]] = -1.0
    taken = np.zeros(len(ob), bool)
    pairs = []
    for i in np.argsort(-rs, kind="stable"):
        row = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(row))
        if row[j] >= PAIR_IOU:
            taken[j] = True
            pairs.append((int(i), j, float(row[j])))
    return pairs


def near_ties(
    ref, out, candidates_ref: set[int], candidates_out: set[int], score_tol: float = 0.0
) -> tuple[set[int], set[int]]:
    """The candidate detections (indices per side) whose presence may flip on float noise.

    Detections of both sides are indexed together (eager first).  A detection's twin (the other
    side's box with IoU > 0.99, whatever its label) is not its competitor; its pair partner below
    that IoU is: that is the NMS flip itself (eager kept a and suppressed b, the artifact the
    reverse).  Scores tie within max(TIE_SCORE_REL * |score|, ``score_tol``).
    """
    n_ref = len(ref[0])
    scores = np.concatenate([ref[1], out[1]])
    if not len(scores):
        return set(), set()
    labels = np.concatenate([ref[2], out[2]])
    boxes = np.concatenate([ref[0].reshape(-1, 4), out[0].reshape(-1, 4)])
    candidates = set(candidates_ref) | {n_ref + j for j in candidates_out}
    ious = iou_matrix(boxes, boxes)
    nms_ious = iou_matrix(boxes, boxes, pad=0.0)  # what NMS compares with its threshold
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    side = np.arange(len(scores)) >= n_ref
    ties = set()
    for k in candidates:
        others = np.arange(len(scores)) != k
        others &= ~((ious[k] > 0.99) & (side != (k >= n_ref)))  # its twin: the same box, other side
        close = np.abs(scores - scores[k]) <= max(TIE_SCORE_REL * abs(scores[k]), score_tol)
        if np.any(close & others):
            ties.add(k)
            continue
        if any(np.any(same[k] & others & (np.abs(nms_ious[k] - t) <= TIE_IOU)) for t in NMS_THRESHOLDS):
            ties.add(k)
    changed = True
    while changed:  # what a flipped box suppressed flips with it
        changed = False
        for k in candidates - ties:
            over = same[k] & (nms_ious[k] > min(NMS_THRESHOLDS))
            if any(over[t] for t in ties):
                ties.add(k)
                changed = True
    return {k for k in ties if k < n_ref}, {k - n_ref for k in ties if k >= n_ref}


def detect_checks(ref: dict, out: dict, tol: Tolerance, output_names: list[str]) -> tuple[list[Check], dict]:
    """Judge the artifact's detections against eager's (see the module docstring)."""
    ref_images, out_images = split_images(ref), split_images(out)
    strict = tol.box_min if tol.precision == "fp32" else PAIR_IOU  # a pair below it is "bad"
    all_pairs = [pair(r, o) for r, o in zip(ref_images, out_images)]
    good_diffs = [
        abs(r[1][i] - o[1][j])
        for (r, o), pairs in zip(zip(ref_images, out_images), all_pairs)
        for i, j, iou in pairs
        if iou >= max(strict, 0.99)
    ]
    # Score noise actually measured on the well-paired detections: two candidates closer than
    # twice that are ordered by float noise (capped so a broken artifact cannot excuse much).
    score_tol = float(min(2 * max(good_diffs, default=0.0), TIE_SCORE_ABS_CAP))
    judged_ref = judged_out = paired = ties = 0
    pair_ious, score_diffs, failures = [], [], []
    worst = 1.0
    label_pairs = label_agree = 0
    for index, (r, o, pairs) in enumerate(zip(ref_images, out_images, all_pairs)):
        n_ref = len(r[0])
        bad = [(i, j) for i, j, iou in pairs if iou < strict]
        cand_ref = (set(range(n_ref)) - {i for i, _, _ in pairs}) | {i for i, _ in bad}
        cand_out = (set(range(len(o[0]))) - {j for _, j, _ in pairs}) | {j for _, j in bad}
        tie_ref, tie_out = near_ties(r, o, cand_ref, cand_out, score_tol)
        for i, j in bad:  # a bad pair with a tied member is excluded whole
            if i in tie_ref or j in tie_out:
                tie_ref.add(i)
                tie_out.add(j)
        # The cut at K: when a side is full, each tied detection the other side gained pushed one
        # detection off this side's tail, so that many unpaired tail detections are ties too.
        slots = ref["boxes"][0].shape[1]
        for mine, cands, gained in (
            (tie_ref, cand_ref, len(tie_out - {j for _, j in bad})),
            (tie_out, cand_out, len(tie_ref - {i for i, _ in bad})),
        ):
            n_mine = n_ref if mine is tie_ref else len(o[0])
            if n_mine == slots and gained:
                mine |= {k for k in cands if k >= n_mine - gained}
        ties += len(tie_ref) + len(tie_out)
        judged_ref += n_ref - len(tie_ref)
        judged_out += len(o[0]) - len(tie_out)
        kept = [(i, j, iou) for i, j, iou in pairs if i not in tie_ref and j not in tie_out]
        paired += len(kept)
        for i, j, iou in kept:
            pair_ious.append(iou)
            score_diffs.append(abs(r[1][i] - o[1][j]))
            worst = min(worst, iou)
        lone_ref = cand_ref - tie_ref - {i for i, _ in bad}
        lone_out = cand_out - tie_out - {j for _, j in bad}
        if lone_ref or lone_out:
            worst = 0.0
            failures.append(
                {"image": index, "eager_unmatched": sorted(lone_ref), "artifact_unmatched": sorted(lone_out)}
            )
        if len(r[0]) and len(o[0]):  # label agreement of boxes paired by IoU alone
            ious = iou_matrix(r[0], o[0])
            best = ious.argmax(1)
            hit = ious[np.arange(len(r[0])), best] >= PAIR_IOU
            label_pairs += int(hit.sum())
            label_agree += int((r[2][hit] == o[2][best[hit]]).sum())
    judged = judged_ref + judged_out
    f1 = 2 * paired / judged if judged else 1.0
    every = sum(len(r[0]) for r in ref_images) + sum(len(o[0]) for o in out_images)
    f1_all = 2 * sum(len(p) for p in all_pairs) / every if every else 1.0
    info = {
        "images": len(ref_images),
        "detections_eager": int(sum(len(r[0]) for r in ref_images)),
        "detections_artifact": int(sum(len(o[0]) for o in out_images)),
        "judged_eager": judged_ref,
        "judged_artifact": judged_out,
        "pairs": paired,
        "match_rate": paired / judged_ref if judged_ref else 1.0,
        "box_match_f1": f1_all,
        "box_match_f1_untied": f1,
        "min_pair_iou": min(pair_ious) if pair_ious else None,
        "mean_pair_iou": float(np.mean(pair_ious)) if pair_ious else None,
        "max_score_diff": float(max(score_diffs)) if score_diffs else 0.0,
        "label_agreement": label_agree / label_pairs if label_pairs else 1.0,
        "near_ties": ties,
        "tie_score_tolerance": score_tol,
        "unmatched": failures[:10],
    }
    total = info["detections_eager"] + info["detections_artifact"]
    info["one_miss"] = 2.0 / total if total else None  # one unpaired detection's cost to the box match F1
    if tol.precision != "fp32":
        info["near_tie_fraction"] = ties / total if total else 0.0
        return [Check("task", "box_match_f1", f1_all, tol.box_min, ">=")], info
    check = Check("task", "box_min_iou", worst, tol.box_min, ">=")
    fraction = ties / total if total else 0.0
    info["near_tie_fraction"] = fraction
    # Ties are rare coincidences; many of them mean a real divergence that merely looks like ties
    # (e.g. every box moved with its score kept): then the excuse itself fails.
    allowance = max(MIN_TIE_ALLOWANCE, MAX_TIE_FRACTION * total)
    return [check, Check("task", "near_ties", ties, allowance, "<=")], info
