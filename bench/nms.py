"""Time lightdeploy::nms_fixed alone: its TFLite forms in LiteRT, ONNX NonMaxSuppression in ORT.

Usage:  .venv/bin/python bench/nms.py [--runs 50] [--threads 2] [--rounds 3]

Sizes are ThunderNet's two NMS calls at 320x320: proposals (N = 2000, IoU 0.7, 200 kept) and
detections (N = 1000, IoU 0.5, 100 kept).  Boxes are seeded random boxes of 8..158 px in a 320 image
(so every output slot fills), scores N(0, 1).  TFLite forms: "builtin" (NON_MAX_SUPPRESSION_V5, what
the exporter uses) and "unrolled" (the plain decomposition, its fallback).  Each model is checked for
exact index equality with eager on three inputs (two with 0.1-rounded, i.e. tied, scores), then timed;
the median is the best of ``--rounds`` rounds, interleaved, since this machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import lightdeploy.ops
from lightdeploy.bench import time_fn
from lightdeploy.ops import _nms as nms_ops

SIZES = {"proposals N=2000 K=200": (2000, 0.7, 200), "detections N=1000 K=100": (1000, 0.5, 100)}


class FixedNMS(torch.nn.Module):
    def __init__(self, threshold: float, max_output: int):
        super().__init__()
        self.threshold, self.max_output = threshold, max_output

    def forward(self, boxes, scores):
        keep, num_kept = nms_ops.nms_fixed(boxes, scores, self.threshold, self.max_output)
        return {"keep": keep, "num_kept": num_kept}


def make_inputs(n: int, seed: int, ties: bool = False, image: int = 320):
    g = torch.Generator().manual_seed(seed)
    size = 8 + torch.rand(n, 2, generator=g) * 150
    xy = torch.rand(n, 2, generator=g) * image - size / 2
    boxes = torch.cat([xy, xy + size], 1).clamp(0, image)
    scores = torch.randn(n, generator=g)
    return boxes, scores.round(decimals=1) if ties else scores


def tflite_runner(module, boxes, scores, threads: int, builtin: bool):
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    from lightdeploy.exporters.tflite import builtins
    from lightdeploy.exporters.tflite.convert import _decompositions

    registered = builtins.registered
    if not builtin:  # as on a litert-torch without the builtin lowering
        builtins.registered = lambda: contextlib.nullcontext(False)
    try:
        with _decompositions(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            content = bytes(litert_torch.convert(module, (), {"boxes": boxes, "scores": scores}).model_content())
    finally:
        builtins.registered = registered
    runner = Interpreter(model_content=content, num_threads=threads).get_signature_runner()
    return lambda b, s: runner(boxes=b, scores=s)["keep"]


def ort_runner(module, boxes, scores, threads: int, path: Path):
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (boxes, scores),
            dynamo=True,
            custom_translation_table=lightdeploy.ops.onnx_translation_table(),
            opset_version=18,
            input_names=["boxes", "scores"],
            output_names=["keep", "num_kept"],
            external_data=False,
            verbose=False,
        )
    program.save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda b, s: session.run(["keep"], {"boxes": b, "scores": s})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (n, threshold, max_output) in SIZES.items():
            module = FixedNMS(threshold, max_output).eval()
            boxes, scores = make_inputs(n, seed=0)
            runners[(label, "tflite builtin")] = tflite_runner(module, boxes, scores, args.threads, True)
            runners[(label, "tflite unrolled")] = tflite_runner(module, boxes, scores, args.threads, False)
            runners[(label, "onnxruntime")] = ort_runner(module, boxes, scores, args.threads, Path(tmp) / "nms.onnx")
        exact = {}
        for (label, backend), run in runners.items():
            n, threshold, max_output = SIZES[label]
            checks = [make_inputs(n, seed, ties=seed > 1) for seed in (1, 2, 3)]
            want = [nms_ops.nms_fixed_eager(b, s, threshold, max_output)[0].numpy() for b, s in checks]
            exact[(label, backend)] = all(
                np.array_equal(run(b.numpy(), s.numpy()), w) for (b, s), w in zip(checks, want)
            )
        best = dict.fromkeys(runners, float("inf"))
        for _ in range(args.rounds):
            for (label, backend), run in runners.items():
                boxes, scores = (t.numpy() for t in make_inputs(SIZES[label][0], seed=0))
                median = time_fn(functools.partial(run, boxes, scores), warmup=5, runs=args.runs)[0]
                best[(label, backend)] = min(best[(label, backend)], median)

    print(f"median ms (best of {args.rounds} rounds), {args.threads} threads")
    for label in SIZES:
        row = "  ".join(
            f"{backend} {best[(label, backend)]:7.2f} (exact: {exact[(label, backend)]})"
            for backend in ("tflite builtin", "tflite unrolled", "onnxruntime")
        )
        print(f"{label:26s} {row}")


if __name__ == "__main__":
    main()
