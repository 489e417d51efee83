"""Soak: 10,000 inferences on one runtime object from 4 threads, per artifact; RSS growth and throughput.

    lightdeploy export shufflenetv2 --to onnx --to openvino --to tflite --out /tmp/rt
    python bench/soak.py /tmp/rt/shufflenetv2-*-fp32 [--calls 10000 --threads 4 --mode throughput --json out.json]

Each artifact runs in a fresh process (its RSS is its own): load once, run ``--warmup`` calls from the
threads (every pooled interpreter / request made, allocators settled), read RSS, then run ``--calls``
calls from ``--threads`` threads on the same object, sampling RSS twice a second.  Every output is
compared with a single-threaded reference for its input (16 inputs in turn), so the soak also counts
wrong results.  Reported: RSS after warm-up, at the end and at its peak, growth after warm-up
(target < 5%), calls per second, and the machine's load average (a shared machine moves the speed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

INPUTS = 16


def rss_mb() -> float:
    """Resident set size of this process now (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (the soak reads RSS on Linux)")


def drive(runtime, feeds, reference, calls: int, threads: int) -> int:
    """Run ``calls`` calls from ``threads`` threads; return how many outputs differ from the reference."""
    wrong = [0]
    lock = threading.Lock()
    counter = iter(range(calls))

    def work() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            k = i % len(feeds)
            out = runtime.run(feeds[k])
            if any(not np.array_equal(out[n], reference[k][n]) for n in reference[k]):
                with lock:
                    wrong[0] += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return wrong[0]


def soak_one(folder: Path, calls: int, threads: int, warmup: int, mode: str) -> dict:
    from lightdeploy.runtimes import open_runtime

    runtime = open_runtime(folder, mode=mode)
    spec = runtime.inputs[0]
    rng = np.random.default_rng(0)
    feeds = [{spec.name: rng.standard_normal([d or 1 for d in spec.shape]).astype(np.float32)} for _ in range(INPUTS)]
    reference = [runtime.run(feed) for feed in feeds]
    wrong = drive(runtime, feeds, reference, warmup, threads)
    start_rss, peak, done = rss_mb(), [rss_mb()], threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    wrong += drive(runtime, feeds, reference, calls, threads)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    end_rss = rss_mb()
    runtime.close()
    return {
        "artifact": folder.name,
        "backend": runtime.info["backend"],
        "mode": mode,
        "concurrency": runtime.info.get("concurrency"),
        "threads": threads,
        "calls": calls,
        "wrong_outputs": wrong,
        "rss_after_warmup_mb": round(start_rss, 1),
        "rss_end_mb": round(end_rss, 1),
        "rss_peak_mb": round(max(peak[0], end_rss), 1),
        "rss_growth_pct": round(100 * (end_rss - start_rss) / start_rss, 2),
        "calls_per_s": round(calls / seconds, 1),
        "seconds": round(seconds, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--mode", default="throughput", choices=["latency", "throughput"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(soak_one(args.artifacts[0], args.calls, args.threads, args.warmup, args.mode)))
        return
    rows = []
    for folder in args.artifacts:
        cmd = [sys.executable, __file__, str(folder), "--one", "--calls", str(args.calls)]
        cmd += ["--threads", str(args.threads), "--warmup", str(args.warmup), "--mode", args.mode]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{folder.name}: FAILED\n{result.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['artifact']:34s} {row['calls']} calls x {row['threads']} threads ({row['mode']}): "
            f"{row['calls_per_s']:.1f}/s, RSS {row['rss_after_warmup_mb']} -> {row['rss_end_mb']} MB "
            f"({row['rss_growth_pct']:+.2f}%, peak {row['rss_peak_mb']}), wrong outputs {row['wrong_outputs']}, "
            f"load {row['load_average']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
