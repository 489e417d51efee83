"""OpenVINO FP32 / FP16 / INT8 against eager PyTorch and ONNX Runtime, exported and timed in one run.

    .venv/bin/python bench/openvino_targets.py                       # default models, their default size
    .venv/bin/python bench/openvino_targets.py --models mobilenetv2 --size 224 224 --runs 100

Exports every model to ONNX (ORT fp32) and OpenVINO fp32/fp16/int8 in a temporary folder, with the
parity gate on (a failed gate is printed and the artifact still timed: speed and parity are separate
facts), then times all of them with ``lightdeploy.bench.bench(threads=2)``: batch-1 median and p90
after warm-up, ratio to eager of the same model in the same run.

Targets: OV INT8 >= 1.5x faster than OV FP32 on mobilenetv2 and shufflenetv2; the best
artifact <= 0.25x eager on each backbone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEFAULT_MODELS = ("mobilenetv2", "shufflenetv2", "snet146", "thundernet", "bisenet", "dfanet")
TARGETS = (("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--size", nargs=2, type=int, default=None, help="H W (default: each model's own)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="keep the artifacts here (default: a temporary folder)")
    args = ap.parse_args(argv)

    from rich.console import Console

    import lightdeploy
    from lightdeploy.bench import bench, export_for_bench, parity_table, render_table

    console = Console(width=160)  # tables stay readable when the output is a file
    known = set(lightdeploy.list_models())
    models = [m for m in args.models if m in known]
    skipped = [m for m in args.models if m not in known]
    if skipped:
        console.print(f"not registered (skipped): {', '.join(skipped)}")
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="bench-openvino-")
    out = Path(args.out or tmp.name)

    exports = export_for_bench(
        models, list(TARGETS), out, size=tuple(args.size) if args.size else None, log=console.print
    )
    console.print(parity_table(exports))
    subjects = [str(e.folder) for e in exports]

    rows = bench(
        subjects,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        progress=lambda m: console.print(f"[dim]{m}[/]"),
        allow_unverified=True,  # speed and parity are separate facts: failed artifacts are timed too
    )
    console.print(render_table(rows, console.width))
    by = {(r.model, r.runtime): r.median_ms for r in rows}
    for model in models:
        fp32, int8 = by.get((model, "openvino/fp32")), by.get((model, "openvino/int8"))
        eager = by.get((model, "eager"))
        best = min(
            (r for r in rows if r.model == model and r.runtime != "eager"), key=lambda r: r.median_ms, default=None
        )
        if fp32 and int8 and eager and best:
            console.print(
                f"{model}: OV int8 speed-up over OV fp32 {fp32 / int8:.2f}x; best artifact "
                f"{best.runtime} at {best.median_ms / eager:.2f}x eager"
            )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
