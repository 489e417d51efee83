"""Throughput of one runtime object called from 1, 2 and 4 threads, per backend and mode.

    lightdeploy export shufflenetv2 --to onnx --to openvino --to tflite --out /tmp/rt
    python bench/runtime_threads.py /tmp/rt/shufflenetv2-*-fp32 --calls 400 [--json out.json]

Each artifact is loaded once per mode (``runtimes.open_runtime(dir, mode=...)``); then ``--calls``
calls are shared out over T threads (T = 1, 2, 4) and the wall time gives calls per second.  For
TFLite, latency mode is one interpreter behind the pool (a lock); it also times a pool of one
default-threaded interpreter per core, the "interpreter per thread" alternative the module docstring
weighs.  The machine's load average is printed with the numbers:
on a shared machine they move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np


def throughput(runtime, calls: int, threads: int) -> float:
    spec = runtime.inputs[0]
    shape = [d or 1 for d in spec.shape]
    feed = {spec.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(max(2, threads)):  # warm-up: every pooled object made and run once
        runtime.run(feed)
    per_thread = [calls // threads + (1 if i < calls % threads else 0) for i in range(threads)]

    def work(n: int) -> None:
        for _ in range(n):
            runtime.run(feed)

    workers = [threading.Thread(target=work, args=(n,)) for n in per_thread]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return calls / (time.perf_counter() - start)


def variants(folder: Path):
    """(label, runtime) for each mode, and for TFLite also the one-interpreter (lock) pool."""
    from lightdeploy.runtimes import open_runtime
    from lightdeploy.runtimes.manifest import read_manifest
    from lightdeploy.runtimes.tflite import TFLiteBackend

    for mode in ("latency", "throughput"):
        yield mode, open_runtime(folder, mode=mode)
    manifest = read_manifest(folder)
    if manifest["backend"] == "tflite":
        cores = os.cpu_count() or 1
        yield "interpreter per core", TFLiteBackend(folder / manifest["backend_file"], manifest, interpreters=cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    print(f"load average before: {os.getloadavg()}, cores: {os.cpu_count()}")
    for folder in args.artifacts:
        for label, runtime in variants(folder):
            with runtime:
                rates = {t: throughput(runtime, args.calls, t) for t in (1, 2, 4)}
                row = {"artifact": folder.name, "variant": label, "info": runtime.info.get("concurrency")}
                row.update({f"calls_per_s_{t}_threads": round(r, 1) for t, r in rates.items()})
                rows.append(row)
                print(
                    f"{folder.name:38s} {label:32s} "
                    + "  ".join(f"{t} thr {r:7.1f}/s" for t, r in rates.items())
                    + f"   ({row['info']})",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
