"""The TensorRT build plan (``trt_plan.json``): everything about the engine that is decided on any
machine, so the GPU machine only builds.

It holds the ONNX to parse (``model.onnx``, or ``model.qdq.onnx`` for INT8), the builder settings
(flags, FP32 layer pins, workspace, optimisation level, timing cache), the optimisation profiles for
dynamic dims, the operator check, the FP16 / INT8 analyses, and the commands that build it:
``lightdeploy build DIR`` or ``sh build_engine.sh`` (trtexec) inside the artifact.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from lightdeploy.errors import ArtifactError
from lightdeploy.runtimes._tensorrt_env import ENGINE_FILE, PLAN_FILE, TIMING_CACHE_FILE

PLAN_FORMAT = "lightdeploy-tensorrt-plan"
PLAN_VERSION = 1
BUILD_SCRIPT = "build_engine.sh"
WORKSPACE_BYTES = 1 << 30
MAX_DYNAMIC_BATCH = 8


def profiles(inputs: list[dict], options) -> list[dict]:
    """Optimisation profiles for dynamic dims: batch 1..MAX_DYNAMIC_BATCH (opt: the export batch);
    H, W from half to twice the export size (opt: the export size)."""
    profile = {}
    for entry in inputs:
        shape = entry["shape"]
        if all(isinstance(d, int) for d in shape):
            continue
        lo, opt, hi = [], [], []
        for axis, d in enumerate(shape):
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
            elif axis == 0:
                lo.append(1), opt.append(max(1, options.batch)), hi.append(max(MAX_DYNAMIC_BATCH, options.batch))
            else:
                size = options.input_size[axis - 2] if axis in (2, 3) else 1
                lo.append(max(1, size // 2)), opt.append(size), hi.append(size * 2)
        profile[entry["name"]] = {"min": lo, "opt": opt, "max": hi}
    return [profile] if profile else []


def builder_settings(precision: str, pinned: list[str]) -> dict:
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[precision]
    if precision == "fp16" and pinned:
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    return {
        "flags": flags,
        "workspace_bytes": WORKSPACE_BYTES,
        "builder_optimization_level": 3,
        "timing_cache": TIMING_CACHE_FILE,
        "engine": ENGINE_FILE,
        "layer_precisions": {name: "fp32" for name in pinned},
    }


def trtexec_command(plan: dict) -> str:
    """The ``trtexec`` line equivalent to ``lightdeploy build`` (run inside the artifact folder)."""
    b = plan["builder"]
    args = [
        "trtexec",
        f"--onnx={plan['onnx']}",
        f"--saveEngine={b['engine']}",
        f"--timingCacheFile={b['timing_cache']}",
        f"--memPoolSize=workspace:{b['workspace_bytes'] >> 20}M",
        f"--builderOptimizationLevel={b['builder_optimization_level']}",
    ]
    for flag in b["flags"]:
        args += {"FP16": ["--fp16"], "INT8": ["--int8"], "OBEY_PRECISION_CONSTRAINTS": ["--precisionConstraints=obey"]}[
            flag
        ]
    if b["layer_precisions"]:
        spec = ",".join(f"{name}:fp32" for name in b["layer_precisions"])
        args += [f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
    for profile in plan["profiles"]:
        for key, opt in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            args.append(opt + "=" + ",".join(f"{n}:{'x'.join(map(str, s[key]))}" for n, s in profile.items()))
    return " ".join(shlex.quote(a) for a in args)


def build_script(plan: dict) -> str:
    """A shell script that builds the engine with trtexec from inside the artifact folder."""
    return (
        "#!/bin/sh\n# Builds model.engine from this TensorRT build plan with trtexec (TensorRT 10, on the GPU).\n"
        "# `lightdeploy build <this folder>` does the same and also runs the parity gate on the engine.\n"
        f'set -e\ncd "$(dirname "$0")"\n{trtexec_command(plan)}\n'
    )


def write_plan(folder: Path, plan: dict) -> None:
    """``trt_plan.json`` and ``build_engine.sh`` in ``folder``."""
    folder = Path(folder)
    (folder / PLAN_FILE).write_text(json.dumps(plan, indent=2, default=float))
    (folder / BUILD_SCRIPT).write_text(build_script(plan))


def read_plan(folder: Path) -> dict:
    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise ArtifactError(f"{str(folder)!r} holds no TensorRT build plan ({PLAN_FILE}); re-export with --to trt.")
    plan = json.loads(path.read_text())
    if plan.get("format") != PLAN_FORMAT or plan.get("version") != PLAN_VERSION:
        raise ArtifactError(f"{str(path)!r} is not a version-{PLAN_VERSION} lightdeploy TensorRT plan; re-export.")
    return plan
