"""Time each ONNX lowering of lightdeploy::ps_roi_align in ONNX Runtime (and eager, for scale).

Usage:  .venv/bin/python bench/ps_roi_align.py [--runs 50] [--threads 2]

Sizes are the detectors': output 7x7, sampling_ratio 2, spatial_scale 1/16,
ThunderNet 245 x 20 x 20 (320 input) with K = 200 RoIs, Light-Head 490 x 32 x 32 (512 input) with
K = 300.  Boxes are seeded random boxes of 16..320 px inside the image (some cross the border).
Prints a median-latency table (ms) and the max abs error of each lowering against eager.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import lightdeploy.ops
from lightdeploy.bench import time_fn
from lightdeploy.ops import _ps_roi_align as psra

SIZES = {
    "ThunderNet 245x20x20 K=200": dict(channels=245, map_size=20, image=320, rois=200),
    "Light-Head 490x32x32 K=300": dict(channels=490, map_size=32, image=512, rois=300),
}
POOLED, SAMPLING, SCALE = 7, 2, 1.0 / 16


class PSRoIAlign(torch.nn.Module):
    def forward(self, features, boxes):
        return psra.ps_roi_align(features, boxes, POOLED, SCALE, SAMPLING)


def make_inputs(channels: int, map_size: int, image: int, rois: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, channels, map_size, map_size, generator=g)
    size = 16 + torch.rand(rois, 2, generator=g) * 304
    corner = torch.rand(rois, 2, generator=g) * image - size / 4
    boxes = torch.cat([torch.zeros(rois, 1), corner, corner + size], dim=1)
    return features, boxes


def median_ms(fn, runs: int) -> float:
    return time_fn(fn, warmup=5, runs=runs)[0]


def export(variant: str, features, boxes, path: Path) -> None:
    table = lightdeploy.ops.onnx_translation_table()
    table[torch.ops.lightdeploy.ps_roi_align.default] = psra.ONNX_VARIANTS[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            PSRoIAlign(),
            (features, boxes),
            dynamo=True,
            custom_translation_table=table,
            opset_version=18,
            input_names=["features", "boxes"],
            output_names=["pooled"],
            dynamic_shapes={"features": {}, "boxes": {0: torch.export.Dim("K", min=0)}},
            external_data=False,
            verbose=False,
        )
    program.save(str(path))


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size_name, size in SIZES.items():
            features, boxes = make_inputs(**size)
            reference = PSRoIAlign()(features, boxes).numpy()
            eager_ms = median_ms(functools.partial(PSRoIAlign(), features, boxes), args.runs)
            results.setdefault("(eager torch)", {})[size_name] = f"{eager_ms:8.2f}"
            for variant in psra.ONNX_VARIANTS:
                path = Path(tmp) / f"{variant}.onnx"
                export(variant, features, boxes, path)
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                options.inter_op_num_threads = 1
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                feeds = {"features": features.numpy(), "boxes": boxes.numpy()}
                error = np.abs(session.run(None, feeds)[0] - reference).max()
                ms = median_ms(functools.partial(session.run, None, feeds), args.runs)
                results.setdefault(variant, {})[size_name] = f"{ms:8.2f} (err {error:.1e})"

    header = f"{'lowering (ORT, ms median)':28s}" + "".join(f"{s:>32s}" for s in SIZES)
    print(
        f"ORT {__import__('onnxruntime').__version__}, torch {torch.__version__}, "
        f"{args.threads} threads, median of {args.runs}"
    )
    print(header)
    for name, row in results.items():
        print(f"{name:28s}" + "".join(f"{row[s]:>32s}" for s in SIZES))


if __name__ == "__main__":
    main()
