"""Train a detector or a segmenter from scratch on the procedural shapes dataset, on CPU, reproducibly.

    python tools/train_synthetic.py detector  [--model thundernet_snet49] [--steps N] [--seed S] ...
    python tools/train_synthetic.py segmenter [--model bisenet_xception39] [--steps N] [--seed S] ...
    python tools/train_synthetic.py heldout DIR [--size 320] [--n 200]     (write the held-out split)

What it does (docs/training.md has the measured runs):
- builds the untrained model with the registry's builder (``factory.build``: seeded random weights,
  no BN re-estimation) for the synthetic classes (``lightdeploy.datasets.synthetic.CLASSES``);
- trains on the endless train stream (``synthetic.stream(seed)``): AdamW, linear warm-up then
  cosine decay over ``--steps``, gradient-norm clipping; the detector with the Faster R-CNN losses
  of ``detection_losses.py``, the segmenter with per-pixel cross-entropy;
- ``--max-minutes`` stops early on a slow (shared) machine, still evaluating and shipping; the sidecar
  records the step, and ``--stop-at STEP`` reproduces such a run (the schedule stays set by --steps);
- every ``--eval-every`` steps evaluates the model's own eval-mode ``forward`` on the held-out
  split (fixed seed, photographs never seen in training): detectors with pycocotools' COCOeval
  (mAP@0.5 and mAP@0.5:0.95), segmenters by mIoU over background + classes and pixel accuracy;
- writes to ``--out`` (default ``lightdeploy/models/weights``): ``MODEL-synthetic.safetensors`` (fp16),
  ``MODEL-synthetic.json`` (sidecar: classes, input size, seed, command, metrics, sha256) and
  ``MODEL-synthetic.curve.json`` (losses every ``--log-every`` steps, held-out metrics, wall time);
  the held-out metric is measured again after loading the fp16 file into a float32 model through
  ``lightdeploy.create_model(weights=...)``, the way users load it.

Same seed, steps, batch and thread count give the same weights on the same machine and torch build.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # detection_losses.py beside this file

from detection_losses import detector_losses  # noqa: E402

import lightdeploy  # noqa: E402
from lightdeploy import factory  # noqa: E402
from lightdeploy.datasets import synthetic, writers  # noqa: E402
from lightdeploy.models.registry import get_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {  # per task: model, input size, batch, steps, learning rate
    "detector": {"model": "thundernet_snet49", "size": 320, "batch": 8, "steps": 2000, "lr": 2e-3},
    "segmenter": {"model": "bisenet_xception39", "size": 256, "batch": 8, "steps": 2000, "lr": 2e-3},
}


# ------------------------------------------------------------------------------------------- data
def to_tensor(images: list[np.ndarray], spec) -> torch.Tensor:
    """uint8 [H, W, 3] RGB images -> normalised [B, 3, H, W] float32, as the runtimes preprocess."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def batches(stream, batch: int):
    while True:
        yield [next(stream) for _ in range(batch)]


# ------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_detector(model, samples, spec, batch: int = 8) -> dict:
    """mAP@0.5 and @0.5:0.95 of the model's own forward, by pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model.eval()
    names = [f"{i:06d}.png" for i in range(len(samples))]
    gt = COCO()
    gt.dataset = writers.coco_dict(samples, names)
    gt.createIndex()
    results = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        boxes, scores, labels, num = model(to_tensor([s.image for s in chunk], spec))
        for k in range(len(chunk)):
            for box, score, label in zip(
                boxes[k, : num[k]].tolist(), scores[k, : num[k]].tolist(), labels[k, : num[k]].tolist()
            ):
                results.append(
                    {
                        "image_id": start + k + 1,
                        "category_id": int(label) + 1,  # model labels are 0-based
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "score": float(score),
                    }
                )
    if not results:
        return {"map50": 0.0, "map": 0.0, "detections": 0}
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {"map50": float(evaluator.stats[1]), "map": float(evaluator.stats[0]), "detections": len(results)}


@torch.no_grad()
def evaluate_segmenter(model, samples, spec, num_classes: int, batch: int = 8) -> dict:
    """mIoU over background + the classes, per-class IoU and pixel accuracy of the eval-mode mask."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: truth, columns: prediction
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        _, mask = model(to_tensor([s.image for s in chunk], spec))
        truth = np.stack([s.mask for s in chunk]).astype(np.int64).ravel()
        confusion += np.bincount(truth * num_classes + mask.numpy().ravel(), minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    iou = inter / np.maximum(union, 1)
    return {
        "miou": float(iou.mean()),
        "pixel_acc": float(inter.sum() / confusion.sum()),
        "iou": [round(float(v), 4) for v in iou],
    }


# -------------------------------------------------------------------------------------- training
def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def build_untrained(name: str, num_classes: int, size: int, seed: int):
    spec = get_spec(name)
    torch.manual_seed(seed)
    size = spec.check_input_size((size, size))
    if "aux_heads" in inspect.signature(spec.builder).parameters:
        # BiSeNet trains with its two auxiliary heads (the paper's loss); they are not shipped.
        spec = dataclasses.replace(spec, builder_kwargs={**spec.builder_kwargs, "aux_heads": True})
    model = factory.build(spec, num_classes, size)
    if spec.task == "detect":
        # The zoo spreads an untrained class layer's logits so random weights emit detections
        # (_detection.init_untrained_classifier); training starts from the usual N(0, 0.01) instead.
        torch.nn.init.normal_(model.head.cls.weight, std=0.01)
        torch.nn.init.zeros_(model.head.cls.bias)
    return spec, model


def train(args, task: str) -> None:
    torch.set_num_threads(args.threads)
    num_classes = len(synthetic.CLASSES)
    seg_classes = num_classes + 1  # segmenters predict background as class 0
    spec, model = build_untrained(args.model, num_classes if task == "detector" else seg_classes, args.size, args.seed)
    heldout = synthetic.heldout(args.heldout, args.size)
    evaluate = (
        (lambda m: evaluate_detector(m, heldout, spec))
        if task == "detector"
        else (lambda m: evaluate_segmenter(m, heldout, spec, seg_classes))
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)  # RoI / anchor sampling
    data = batches(synthetic.stream(args.seed, args.size), args.batch)
    warmup = max(1, int(0.05 * args.steps))
    curve = {"loss": [], "heldout": []}
    totals: dict[str, float] = {}
    train_seconds = 0.0
    started, cpu_started = time.time(), time.process_time()  # CPU time: what contention does not inflate
    stop_at = min(args.steps, args.stop_at or args.steps)
    for step in range(stop_at):
        if args.max_minutes and train_seconds > 60 * args.max_minutes:
            # A guard for shared machines: stop where the budget ends, evaluate and ship; the
            # sidecar records the step, and --stop-at that step reproduces the run.
            stop_at = step
            break
        tick = time.time()
        model.train()
        samples = next(data)
        images = to_tensor([s.image for s in samples], spec)
        if task == "detector":
            targets = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.labels)} for s in samples]
            losses = detector_losses(model, images, targets, gen)
        else:
            losses = segmenter_losses(model(images), torch.from_numpy(np.stack([s.mask for s in samples])).long())
        loss = sum(losses.values())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        train_seconds += time.time() - tick
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + v.item()
        if (step + 1) % args.log_every == 0:
            row = {
                "step": step + 1,
                "train_s": round(train_seconds, 1),
                "cpu_s": round(time.process_time() - cpu_started, 1),
                **{k: round(v / args.log_every, 4) for k, v in totals.items()},
            }
            curve["loss"].append(row)
            print(json.dumps(row), flush=True)
            totals = {}
        if (step + 1) % args.eval_every == 0 or step + 1 == stop_at:
            metrics = {"step": step + 1, "train_s": round(train_seconds, 1), **evaluate(model)}
            curve["heldout"].append(metrics)
            print("heldout", json.dumps(metrics), flush=True)
    if not curve["heldout"] or curve["heldout"][-1]["step"] != stop_at:
        curve["heldout"].append({"step": stop_at, "train_s": round(train_seconds, 1), **evaluate(model)})
    curve["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    curve["stopped_at_step"] = stop_at
    ship(args, task, spec, model, curve, train_seconds, time.time() - started, heldout, evaluate)


def segmenter_losses(outputs, masks: torch.Tensor) -> dict:
    """Class-balanced cross-entropy on the main logits and on each auxiliary head's (BiSeNet's loss:
    main + aux16 + aux8, each weight 1).  Shapes cover a few percent of the pixels, so unweighted
    cross-entropy learns "background, else circle"; the weights are SEG_CLASS_WEIGHTS."""
    weight = torch.tensor(SEG_CLASS_WEIGHTS)
    heads = [o for o in outputs if o.is_floating_point()]  # logits (and aux logits); not the mask
    names = ("ce", "aux16", "aux8")
    return {name: F.cross_entropy(logits, masks, weight=weight) for name, logits in zip(names, heads)}


# Background, circle, square, triangle, star: 1 / sqrt(pixel share), normalised to mean 1 (shares in the
# stream at 256: 89.1%, 4.4%, 2.5%, 2.0%, 2.0%; docs/training.md).
SEG_CLASS_WEIGHTS = (0.2, 0.91, 1.21, 1.33, 1.35)


# -------------------------------------------------------------------------------------- shipping
def ship(args, task, spec, model, curve, train_seconds, total_seconds, heldout, evaluate) -> None:
    """fp16 safetensors + sidecar + curve; the held-out metric re-measured from the fp16 file."""
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.model}-synthetic"
    weights = out / f"{stem}.safetensors"
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("aux_heads.")  # training-only heads: the deployed model has none
    }
    save_file(state, str(weights), metadata={"model": args.model, "dataset": "lightdeploy synthetic shapes"})
    num_classes = model.num_classes if task == "detector" else len(synthetic.CLASSES) + 1
    reloaded = lightdeploy.create_model(
        args.model, num_classes=num_classes, weights=weights, input_size=(args.size, args.size)
    )
    fp16_metrics = evaluate(reloaded)
    class_names = list(synthetic.CLASSES) if task == "detector" else ["background", *synthetic.CLASSES]
    sidecar = {
        "file": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "bytes": weights.stat().st_size,
        "dtype": "float16",
        "model": args.model,
        "task": spec.task,
        "num_classes": num_classes,
        "class_names": class_names,
        "label_note": (
            "detector labels are 0-based indices into class_names (COCO category id = label + 1)"
            if task == "detector"
            else "mask value = index into class_names (0 = background)"
        ),
        "input_size": [args.size, args.size],
        "preprocessing": {"mean": list(spec.mean), "std": list(spec.std), "layout": "NCHW", "range": "RGB / 255"},
        "seed": args.seed,
        "command": "python tools/train_synthetic.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "training": {
            "steps": args.steps,
            "stopped_at_step": curve["stopped_at_step"],
            "batch": args.batch,
            "lr": args.lr,
            "threads": args.threads,
            "images_seen": curve["stopped_at_step"] * args.batch,
            "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(total_seconds, 1),
            "cpu_seconds": curve["cpu_seconds"],
            "torch": torch.__version__,
            "train_photographs": list(synthetic.TRAIN_PHOTOS),
        },
        "heldout": {
            "generator": "lightdeploy.datasets.synthetic.heldout",
            "seed": synthetic.HELDOUT_SEED,
            "images": len(heldout),
            "size": [args.size, args.size],
            "photographs": list(synthetic.HELDOUT_PHOTOS),
            "metrics_fp32": {k: v for k, v in curve["heldout"][-1].items() if k not in ("step", "train_s")},
            "metrics_fp16_file": fp16_metrics,
        },
        "curve": f"{stem}.curve.json",
    }
    (out / f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    (out / f"{stem}.curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    print(json.dumps(sidecar, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)
    for task, d in DEFAULTS.items():
        p = sub.add_parser(task, help=f"train a {task} (default {d['model']})")
        p.add_argument("--model", default=d["model"])
        p.add_argument("--size", type=int, default=d["size"], help="square input size, train and held-out")
        p.add_argument("--batch", type=int, default=d["batch"])
        p.add_argument("--steps", type=int, default=d["steps"])
        p.add_argument("--lr", type=float, default=d["lr"])
        p.add_argument("--weight-decay", type=float, default=1e-4)
        p.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--heldout", type=int, default=synthetic.HELDOUT_SIZE, help="held-out images")
        p.add_argument("--stop-at", type=int, default=0, help="stop after this step (schedule still set by --steps)")
        p.add_argument("--max-minutes", type=float, default=0, help="stop when training time exceeds this (0: never)")
        p.add_argument("--log-every", type=int, default=50)
        p.add_argument("--eval-every", type=int, default=500)
        p.add_argument("--out", default=str(ROOT / "lightdeploy" / "models" / "weights"))
    p = sub.add_parser("heldout", help="write the held-out split (COCO JSON + PNG masks)")
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--n", type=int, default=synthetic.HELDOUT_SIZE)
    args = parser.parse_args(argv)
    if args.task == "heldout":
        print(writers.write_heldout(args.dir, args.n, args.size))
    else:
        train(args, args.task)


if __name__ == "__main__":
    main()
