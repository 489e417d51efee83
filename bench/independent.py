"""lightdeploy bench against the backends' own benchmark tools, on the same file and threads.

    lightdeploy export shufflenetv2 --to openvino --to tflite --out /tmp/bt
    .venv/bin/python bench/independent.py /tmp/bt/* [--threads 2] [--runs 50] [--rounds 5] [--json out.json]
    .venv/bin/python bench/independent.py /tmp/bt/* --paired 300

Each artifact folder (OpenVINO IR or TFLite, as the manifest says) is timed by lightdeploy's bench
(``lightdeploy.bench.time_artifact``: the runtime wrapper's ``run``, batch 1, random float32 feed) and by
the tool its runtime ships, configured as the wrapper configures the runtime:

- OpenVINO ``benchmark_app -m model.xml -d CPU -hint none -nstreams 1 -nthreads N -api sync -niter K
  -infer_precision f32 -ip f32``: one stream and one synchronous request (the wrapper's latency mode),
  f32 compute (the wrapper pins it) and a float32 input (benchmark_app otherwise feeds an image input as
  u8 and converts it inside the graph).  A dynamic input keeps the model dynamic (``-data_shape``, as the
  wrapper compiles it) with inputs filled once (``-inference_only true``).  benchmark_app runs one
  warm-up inference (the count is not configurable) and reports the request's own C++ timer
  (``InferRequest.latency``), not the Python wall time lightdeploy reports.
- LiteRT ``litert-benchmark --model model.tflite --num_threads N --num_runs K --warmup_runs W``: the CPU
  accelerator (XNNPACK, as the wrapper's interpreter).

Compared statistic: the median latency (benchmark_app's "Median", litert-benchmark's "Inference
(median)"; lightdeploy's median of ``runs``).  ``--rounds`` alternates the two sides R times, each going
first in every other round; the ratio judged is the median over rounds of lightdeploy's median / the
tool's, each pair taken seconds apart (a shared machine's load drifts within seconds).  The ratio of
the two sides' fastest runs is printed beside it.  Exit 1 when a tool is missing (naming the extra that
installs it), 2 when a ratio is outside ``--tolerance``, 3 when a tool fails or its output has no
latency figure.

``--paired CALLS`` separates the wrapper from the machine: in one process, lightdeploy's ``run`` and the
call the tool's loop times (see ``tool_loop_call``) alternate call by call, and the median per-pair
ratio and difference say what the wrapper adds, with both sides under the same load.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# backend -> (tool, the lightdeploy extra that installs it)
TOOLS = {"openvino": ("benchmark_app", "openvino-runtime"), "tflite": ("litert-benchmark", "tflite-runtime")}
TOLERANCE = 0.10


class ToolOutputError(ValueError):
    """A tool's output holds no latency figure this script can read."""


def _number(pattern: str, text: str, tool: str, what: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    if not match:
        tail = "\n".join(text.strip().splitlines()[-8:])
        raise ToolOutputError(
            f"{tool}: no {what} in its output (format changed, or the run failed). Last lines:\n{tail}"
        )
    return float(match.group(1))


def parse_benchmark_app(text: str) -> dict[str, float]:
    """benchmark_app's latency block (ms): median, average, min, max; and the iteration count."""
    stats = {
        key: _number(rf"^\[ INFO \]\s+{label}:\s+([0-9.]+) ms\s*$", text, "benchmark_app", f"{label} latency")
        for key, label in (("median", "Median"), ("average", "Average"), ("min", "Min"), ("max", "Max"))
    }
    stats["count"] = _number(r"^\[ INFO \] Count:\s+(\d+) iterations", text, "benchmark_app", "iteration count")
    return stats


def parse_litert_benchmark(text: str) -> dict[str, float]:
    """litert-benchmark's results block (ms): median, average, min, max, p95; and the run count."""
    pat = r"^Inference \({}\):\s+([0-9.]+) ms"
    stats = {
        key: _number(pat.format(label), text, "litert-benchmark", f"Inference ({label})")
        for key, label in (("median", "median"), ("average", "avg"), ("min", "min"), ("max", "max"), ("p95", "p95"))
    }
    stats["count"] = _number(r"^Inference \(avg\):\s+[0-9.]+ ms \((\d+) runs\)", text, "litert-benchmark", "run count")
    return stats


def find_tool(name: str) -> list[str] | None:
    """The command that runs ``name``: its script beside this interpreter or on PATH, else its console-script
    entry point run by this interpreter (a venv that shares another's site-packages has no script of its own)."""
    from importlib.metadata import entry_points

    script = Path(sys.executable).parent / name
    if script.is_file() or shutil.which(name):
        return [str(script) if script.is_file() else shutil.which(name)]
    found = entry_points(group="console_scripts", name=name)
    if not found:
        return None
    module, _, func = next(iter(found)).value.partition(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}())"
    return [sys.executable, "-c", code]


def benchmark_app_command(
    tool: list[str], xml: Path, manifest: dict, shape: list[int], threads: int, runs: int
) -> list[str]:
    cmd = [*tool, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads)]
    cmd += ["-api", "sync", "-niter", str(runs), "-infer_precision", "f32", "-ip", "f32"]
    entry = manifest["inputs"][0]
    if any(not isinstance(d, int) for d in entry["shape"]):
        cmd += ["-data_shape", f"{entry['name']}[{','.join(map(str, shape))}]", "-inference_only", "true"]
    return cmd


def litert_command(tool: list[str], model: Path, threads: int, runs: int, warmup: int) -> list[str]:
    cmd = [*tool, "--model", str(model), "--num_threads", str(threads)]
    return cmd + ["--num_runs", str(runs), "--warmup_runs", str(warmup)]


def run_tool(cmd: list[str], name: str, parse) -> dict[str, float]:
    # the tools run from the temp folder (their report files land there), so artifact paths are absolute
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise ToolOutputError(f"{name} exited {proc.returncode}:\n{tail}")
    return parse(proc.stdout)


@dataclass
class Pair:
    artifact: str
    backend: str  # backend/precision
    tool: str
    lightdeploy_ms: float  # median of the round medians
    tool_ms: float
    ratio: float  # median over rounds of lightdeploy / tool medians: the figure judged against the tolerance
    within: bool
    min_ratio: float  # of the fastest runs: the least disturbed by other load on the machine
    rounds: list[dict]  # each round's medians and minima, both sides
    command: list[str]


def measure(
    folder: Path, tools: dict[str, list[str]], *, threads: int, runs: int, warmup: int, rounds: int, tolerance: float
) -> Pair:
    from lightdeploy.bench import concrete_shape, time_artifact
    from lightdeploy.runtimes.manifest import read_manifest

    manifest = read_manifest(folder)
    backend = manifest["backend"]
    tool = TOOLS[backend][0]
    model = folder / manifest["backend_file"]
    if backend == "openvino":
        cmd = benchmark_app_command(tools[backend], model, manifest, concrete_shape(manifest), threads, runs)
        parse = parse_benchmark_app
    else:
        cmd, parse = litert_command(tools[backend], model, threads, runs, warmup), parse_litert_benchmark
    per_round = []
    for i in range(rounds):
        # each side goes first in every other round: a load rising or falling through a round favours neither
        if i % 2:
            theirs = run_tool(cmd, tool, parse)
        ours = time_artifact(folder, manifest, runs=runs, warmup=warmup, threads=threads, allow_unverified=True)
        if not i % 2:
            theirs = run_tool(cmd, tool, parse)
        per_round.append(
            {
                "lightdeploy_ms": statistics.median(ours),
                "tool_ms": theirs["median"],
                "lightdeploy_min_ms": min(ours),
                "tool_min_ms": theirs["min"],
            }
        )
    ours = statistics.median(r["lightdeploy_ms"] for r in per_round)
    theirs = statistics.median(r["tool_ms"] for r in per_round)
    # paired by round, the two sides seconds apart: the ratio the machine's drift disturbs least
    ratio = statistics.median(r["lightdeploy_ms"] / r["tool_ms"] for r in per_round)
    fastest = min(r["lightdeploy_min_ms"] for r in per_round) / min(r["tool_min_ms"] for r in per_round)
    return Pair(
        folder.name,
        f"{backend}/{manifest['precision']}",
        tool,
        ours,
        theirs,
        ratio,
        abs(ratio - 1) <= tolerance,
        fastest,
        per_round,
        [tool, *cmd[len(tools[backend]) :]],
    )


def render(pairs: list[Pair], threads: int, runs: int, rounds: int, tolerance: float):
    from rich.table import Table

    table = Table(
        title=f"median latency (ms), batch 1, {threads} threads, {rounds} rounds of {runs} runs",
        caption="tool: benchmark_app for openvino, litert-benchmark for tflite; ms: median of the round medians; "
        "ratio: median of the rounds' lightdeploy / tool; min ratio: of the fastest runs",
    )
    table.add_column("artifact", overflow="fold")
    table.add_column("backend")
    for col in ("lightdeploy", "tool", "ratio", "min ratio"):
        table.add_column(col, justify="right")
    table.add_column(f"within {tolerance:.0%}")
    for p in pairs:
        table.add_row(
            p.artifact,
            p.backend,
            f"{p.lightdeploy_ms:.2f}",
            f"{p.tool_ms:.2f}",
            f"{p.ratio:.3f}",
            f"{p.min_ratio:.3f}",
            "yes" if p.within else "[red]NO[/]",
        )
    return table


def tool_loop_call(folder: Path, manifest: dict, runtime, x, threads: int):
    """The call each tool's timing loop makes, on the runtime's own compiled model where it has one:
    benchmark_app's sync loop runs ``InferRequest.infer()`` on tensors set once; litert-benchmark's runs
    ``CompiledModel.run_by_name`` on buffers written once."""
    if manifest["backend"] == "openvino":
        import openvino as ov

        request = runtime.compiled_model.create_infer_request()
        request.set_input_tensor(ov.Tensor(x))
        return request.infer
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.environment import Environment, EnvironmentOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    options = Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=threads))
    env = Environment.create(options=EnvironmentOptions())
    model = CompiledModel.from_file(str(folder / manifest["backend_file"]), environment=env, options=options)
    sig = next(iter(model.get_signature_list()))
    ins = {k: model.create_input_buffer_by_name(sig, k) for k in model.get_input_tensor_details(sig)}
    outs = {k: model.create_output_buffer_by_name(sig, k) for k in model.get_output_tensor_details(sig)}
    for buffer in ins.values():
        buffer.write(x)
    return lambda: model.run_by_name(sig, ins, outs)


def paired(folder: Path, *, threads: int, calls: int, warmup: int) -> dict:
    """lightdeploy's ``run`` and the tool's loop call alternating call by call in one process, so both
    see the same load: the median of the per-pair ratios isolates what the wrapper adds."""
    import numpy as np

    from lightdeploy.bench import random_feed
    from lightdeploy.runtimes import open_runtime
    from lightdeploy.runtimes.manifest import read_manifest

    manifest = read_manifest(folder)
    feed = random_feed(manifest)
    (x,) = feed.values()
    with open_runtime(folder, manifest, threads=threads, allow_unverified=True) as runtime:
        fns = (lambda: runtime.run(feed), tool_loop_call(folder, manifest, runtime, x, threads))
        for fn in fns:
            for _ in range(warmup):
                fn()
        times = [[], []]
        for _ in range(calls):
            for fn, out in zip(fns, times):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
    ours, theirs = (np.array(t) for t in times)
    return {
        "artifact": folder.name,
        "lightdeploy_ms": float(np.median(ours)),
        "loop_call_ms": float(np.median(theirs)),
        "paired_ratio": float(np.median(ours / theirs)),
        "paired_diff_us": float(np.median(ours - theirs) * 1e3),
    }


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "folders", nargs="+", type=lambda p: Path(p).resolve(), help="artifact folders (OpenVINO or TFLite)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="|ratio - 1| allowed (default 0.10)")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="CALLS",
        help="instead: lightdeploy's run and the tool's loop call alternating CALLS times in one process",
    )
    args = ap.parse_args(argv)

    from rich.console import Console

    from lightdeploy.artifact import cpu_summary
    from lightdeploy.runtimes.manifest import read_manifest

    console = Console()
    backends = {}
    for folder in args.folders:
        backend = read_manifest(folder, verify=False)["backend"]
        if backend not in TOOLS:
            console.print(f"{folder}: a {backend} artifact; this script compares openvino and tflite only (skipped)")
            continue
        backends[folder] = backend
    if args.paired:
        rows = [paired(f, threads=args.threads, calls=args.paired, warmup=args.warmup) for f in backends]
        for row in rows:
            console.print(
                f"{row['artifact']}: lightdeploy {row['lightdeploy_ms']:.2f} ms, the tool's loop call "
                f"{row['loop_call_ms']:.2f} ms; per pair: ratio {row['paired_ratio']:.3f}, "
                f"difference {row['paired_diff_us']:.0f} us"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
    tools, missing = {}, []
    for backend in sorted(set(backends.values())):
        name, extra = TOOLS[backend]
        tools[backend] = find_tool(name)
        if tools[backend] is None:
            missing.append(f"{name} (pip install 'lightdeploy[{extra}]')")
    if missing:
        print(f"missing benchmark tool(s): {', '.join(missing)}", file=sys.stderr)
        return 1
    before = load_average()
    pairs = []
    for folder, backend in backends.items():
        console.print(f"timing {folder.name} ({args.rounds} rounds, alternating with {TOOLS[backend][0]})")
        try:
            pairs.append(
                measure(
                    folder,
                    tools,
                    threads=args.threads,
                    runs=args.runs,
                    warmup=args.warmup,
                    rounds=args.rounds,
                    tolerance=args.tolerance,
                )
            )
        except ToolOutputError as exc:
            print(f"{folder.name}: {exc}", file=sys.stderr)
            return 3
    after = load_average()
    console.print(render(pairs, args.threads, args.runs, args.rounds, args.tolerance))
    console.print(f"load average (1, 5, 15 min) before {before}, after {after}, on {cpu_summary()}")
    if args.json:
        facts = {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "rounds": args.rounds}
        facts |= {"tolerance": args.tolerance, "load_average": {"before": before, "after": after}}
        Path(args.json).write_text(json.dumps({**facts, "pairs": [asdict(p) for p in pairs]}, indent=2))
    return 0 if all(p.within for p in pairs) else 2


if __name__ == "__main__":
    sys.exit(main())
