"""Measure the two ONNX forms of channel shuffle in ONNX Runtime (2 threads, batch 1).

    .venv/bin/python bench/channel_shuffle.py

Prints the best-of-rounds median latency of ShuffleNetV2 1.0x at 224x224 exported with each form, and of the op
alone on a stage-3 sized tensor.  The chosen form and these numbers are recorded in
lightdeploy/ops/_channel_shuffle.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lightdeploy.bench import time_fn
from lightdeploy.exporters.base import ExportJob, ExportOptions
from lightdeploy.exporters.onnx.export import export_onnx
from lightdeploy.factory import create_model
from lightdeploy.models.registry import get_spec
from lightdeploy.ops import _channel_shuffle as cs

RUNS, WARMUP, ROUNDS = 100, 20, 5


class ShuffleOnly(torch.nn.Module):
    def forward(self, x):
        return cs.channel_shuffle(x, 2)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build(model: torch.nn.Module, spec, size, shape, variant: str, folder: Path):
    original = dict(cs.ONNX_TRANSLATIONS)
    cs.ONNX_TRANSLATIONS[torch.ops.lightdeploy.channel_shuffle.default] = cs.ONNX_VARIANTS[variant]
    try:
        job = ExportJob(model, spec, ExportOptions(target="onnx", input_size=size), ("out",))
        job.example_input = lambda: torch.zeros(shape)  # the op-only case takes a feature map
        path = folder / f"{variant}-{shape[1]}.onnx"
        export_onnx(job, path)
    finally:
        cs.ONNX_TRANSLATIONS.clear()
        cs.ONNX_TRANSLATIONS.update(original)
    sess = session(path)
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    return lambda: sess.run(None, feed)


def measure_interleaved(fns: list) -> list[float]:
    """Best median over rounds that alternate the candidates: robust to a busy shared machine."""
    best = [float("inf")] * len(fns)
    for _ in range(ROUNDS):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], time_fn(fn, WARMUP, RUNS)[0])
    return best


def main() -> None:
    spec = get_spec("shufflenetv2")
    net = create_model("shufflenetv2", calibrate_bn=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'case':40s} {'gather ms':>10s} {'reshape ms':>11s}")
        cases = [
            ("shufflenetv2 1.0x, 224x224 (16 shuffles)", net, (1, 3, 224, 224)),
            ("op alone, [1, 232, 14, 14]", ShuffleOnly(), (1, 232, 14, 14)),
            ("op alone, [1, 116, 28, 28]", ShuffleOnly(), (1, 116, 28, 28)),
        ]
        for label, model, shape in cases:
            fns = [build(model, spec, (224, 224), shape, v, folder) for v in ("gather", "reshape")]
            times = measure_interleaved(fns)
            print(f"{label:40s} {times[0]:10.4f} {times[1]:11.4f}")


if __name__ == "__main__":
    main()
