"""TFLite FP32 / FP16 / INT8 (LiteRT interpreter, XNNPACK) against eager PyTorch and ONNX Runtime.

    .venv/bin/python bench/tflite.py                        # default models, their default size
    .venv/bin/python bench/tflite.py --models mobilenetv2 --size 224 224 --runs 100

Exports every model to ONNX (ORT fp32) and TFLite fp32/fp16/int8 in a temporary folder, with the
parity gate on (a failed gate is printed and the artifact still timed: speed and parity are separate
facts), then times all of them with ``lightdeploy.bench.bench(threads=2)``: batch-1 median and p90
after warm-up, ratio to eager of the same model in the same run.  Models not registered (or whose
conversion fails) are reported and skipped.

Target (issue 6): TFLite fp32 within 1.5x of ONNX Runtime's latency on every backbone.  INT8 in
XNNPACK pays off on ARM; x86 numbers are reported as they are.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
    from rich.table import Table

    import lightdeploy
    from lightdeploy.bench import bench, render_table, write_json
    from lightdeploy.errors import LightdeployError, ParityError
    from lightdeploy.pipeline import artifact_name, export
    from lightdeploy.runtimes.manifest import read_manifest

    console = Console()
    known = set(lightdeploy.list_models())
    models = [m for m in args.models if m in known]
    skipped = [m for m in args.models if m not in known]
    if skipped:
        console.print(f"not registered (skipped): {', '.join(skipped)}")
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="bench-tflite-")
    out = Path(args.out or tmp.name)

    parity = Table(title="parity against eager (the gate's inputs)")
    for col in ("artifact", "passed", "output", "max abs", "cosine", "task", "export s", "ops"):
        parity.add_column(col)
    subjects: list[str] = []
    targets = [t for t in TARGETS if t[0] == "onnx" or t[1] in args.precisions]
    for model in models:
        for target, precision in targets:
            t0 = time.perf_counter()
            size = tuple(args.size) if args.size else None
            try:
                outcome = export(model, target, precision=precision, input_size=size, out=out)
                folder, report, ok = outcome.folder, outcome.report, "yes"
            except ParityError as exc:  # the artifact is kept: time it anyway, say it failed
                folder = out / artifact_name(model, target, precision)
                report, ok = read_manifest(folder)["parity"], "NO"
                console.print(f"[red]{exc}[/]")
            except (LightdeployError, RuntimeError, ValueError) as exc:  # e.g. a model that does not convert
                console.print(f"[red]{model} -> {target}/{precision}: {type(exc).__name__}: {str(exc)[:300]}[/]")
                continue
            seconds = time.perf_counter() - t0
            report = report if isinstance(report, dict) else report.as_dict()
            ops = read_manifest(folder)["backend_info"].get("ops", {}) if target == "tflite" else {}
            op_text = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))
            task = ", ".join(f"{k}={v:.3g}" for k, v in report["task"].items() if isinstance(v, float))
            for i, (name, s) in enumerate(report["outputs"].items()):
                first = i == 0
                parity.add_row(folder.name if first else "", ok if first else "", name, f"{s['max_abs']:.3g}",
                               f"{s['cosine']:.6f}", task if first else "", f"{seconds:.1f}" if first else "",
                               op_text if first else "")
            subjects.append(str(folder))
    console.print(parity)

    rows = bench(subjects, runs=args.runs, warmup=args.warmup, threads=args.threads,
                 progress=lambda m: console.print(f"[dim]{m}[/]"))
    console.print(render_table(rows))
    if args.out:
        write_json(rows, Path(args.out) / "bench-tflite.json")
    by = {(r.model, r.runtime): r.median_ms for r in rows}
    for model in sorted({r.model for r in rows}):
        ort, tfl = by.get((model, "onnxruntime/fp32")), by.get((model, "tflite/fp32"))
        if ort and tfl:
            verdict = "meets" if tfl / ort <= FP32_TARGET_RATIO else "MISSES"
            extra = "".join(f", {p} {by[(model, f'tflite/{p}')]:.2f} ms" for p in ("fp16", "int8")
                            if (model, f"tflite/{p}") in by)
            console.print(f"{model}: TFLite fp32 {tfl:.2f} ms vs ORT {ort:.2f} ms = {tfl / ort:.2f}x "
                          f"({verdict} the {FP32_TARGET_RATIO}x target){extra}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
