"""TFLite FP32 / FP16 / INT8 (LiteRT interpreter, XNNPACK) against eager PyTorch and ONNX Runtime.

    .venv/bin/python bench/tflite.py                        # default models, their default size
    .venv/bin/python bench/tflite.py --models mobilenetv2 --size 224 224 --runs 100

Exports every model to ONNX (ORT fp32) and TFLite fp32/fp16/int8 in a temporary folder, with the
parity gate on (a failed gate is printed and the artifact still timed: speed and parity are separate
facts), then times all of them with ``lightdeploy.bench.bench(threads=2)``: batch-1 median and p90
after warm-up, ratio to eager of the same model in the same run.  Models not registered (or whose
conversion fails) are reported and skipped.

Target: TFLite fp32 within 1.5x of ONNX Runtime's latency on every backbone.  INT8 in
XNNPACK pays off on ARM; x86 numbers are reported as they are.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEFAULT_MODELS = ("mobilenetv2", "shufflenetv2", "snet146", "thundernet", "bisenet", "dfanet")
TARGETS = (("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"))
FP32_TARGET_RATIO = 1.5  # TFLite fp32 / ORT fp32


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--size", nargs=2, type=int, default=None, help="H W (default: each model's own)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="keep the artifacts here (default: a temporary folder)")
    args = ap.parse_args(argv)

    from rich.console import Console

    import lightdeploy
    from lightdeploy.bench import bench, export_for_bench, parity_table, render_table, write_json
    from lightdeploy.runtimes.manifest import read_manifest

    console = Console()
    known = set(lightdeploy.list_models())
    models = [m for m in args.models if m in known]
    skipped = [m for m in args.models if m not in known]
    if skipped:
        console.print(f"not registered (skipped): {', '.join(skipped)}")
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="bench-tflite-")
    out = Path(args.out or tmp.name)

    def op_list(e) -> str:
        ops = read_manifest(e.folder)["backend_info"].get("ops", {}) if e.target == "tflite" else {}
        return ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))

    targets = [t for t in TARGETS if t[0] == "onnx" or t[1] in args.precisions]
    # RuntimeError / ValueError too: a model that does not convert is reported and skipped.
    exports = export_for_bench(
        models,
        targets,
        out,
        size=tuple(args.size) if args.size else None,
        log=console.print,
        also_catch=(RuntimeError, ValueError),
    )
    console.print(parity_table(exports, extra={"ops": op_list}))
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
    if args.out:
        write_json(rows, Path(args.out) / "bench-tflite.json")
    by = {(r.model, r.runtime): r.median_ms for r in rows}
    for model in sorted({r.model for r in rows}):
        ort, tfl = by.get((model, "onnxruntime/fp32")), by.get((model, "tflite/fp32"))
        if ort and tfl:
            verdict = "meets" if tfl / ort <= FP32_TARGET_RATIO else "MISSES"
            extra = "".join(
                f", {p} {by[(model, f'tflite/{p}')]:.2f} ms" for p in ("fp16", "int8") if (model, f"tflite/{p}") in by
            )
            console.print(
                f"{model}: TFLite fp32 {tfl:.2f} ms vs ORT {ort:.2f} ms = {tfl / ort:.2f}x "
                f"({verdict} the {FP32_TARGET_RATIO}x target){extra}"
            )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
