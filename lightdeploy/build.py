"""``lightdeploy build DIR``: the TensorRT engine of a build plan, built on the GPU machine and gated.

Like export, the build happens in a staging copy of the artifact and is renamed into place only when
the engine, the updated plan and manifest are all written and the engine's gate passed: a crash
leaves the plan artifact as it was, and an engine that fails its gate is kept beside it as
``NAME.failed/`` with its report while the plan stays in place.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lightdeploy.errors import MissingDependencyError, UsageError


def build(
    folder: str | Path,
    *,
    parity: bool = True,
    images_dir: str | None = None,
    weights: str | Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
):
    """Build ``model.engine`` from the plan in ``folder``, then gate it; return the parity report
    (None with ``parity=False``).  The manifest records the engine's TensorRT version and GPU."""
    from lightdeploy.artifact import commit_verdict, staging_folder, write_export_log, write_manifest
    from lightdeploy.errors import ParityError
    from lightdeploy.exporters.tensorrt.plan import read_plan, write_plan
    from lightdeploy.runtimes import verify
    from lightdeploy.runtimes._tensorrt_build import build_engine
    from lightdeploy.runtimes._tensorrt_env import ENGINE_FILE, TIMING_CACHE_FILE, trt_environment
    from lightdeploy.runtimes.manifest import EXPORT_LOG, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder, verify=True)
    if manifest.get("backend") != "tensorrt":
        raise UsageError(
            f"{str(folder)!r} is a {manifest.get('backend')} artifact; `lightdeploy build` takes a "
            "TensorRT build plan (export with --to trt)."
        )
    verify(folder, manifest, allow_unverified=True)  # the plan's files are listed and inside the folder
    plan = read_plan(folder)
    ok, why = trt_environment()
    if not ok:
        raise MissingDependencyError(f"`lightdeploy build` runs on the GPU machine: {why}")
    with staging_folder(folder) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        (tmp / EXPORT_LOG).unlink(missing_ok=True)  # the export's log; the build writes its own
        start = time.perf_counter()
        info = build_engine(tmp / plan["onnx"], plan, tmp / ENGINE_FILE, tmp / TIMING_CACHE_FILE, progress)
        built = time.perf_counter()
        write_plan(
            tmp,
            {**plan, "status": f"built: {ENGINE_FILE} (TensorRT {info['tensorrt_version']}, {info['gpu']['name']})"},
        )
        manifest = {k: v for k, v in manifest.items() if k not in ("files", "parity")}
        timing_cache_reused = info.pop("timing_cache_reused")
        manifest = write_manifest(
            tmp,
            {
                **manifest,
                "backend_file": ENGINE_FILE,
                "backend_info": {**manifest.get("backend_info", {}), "engine": info},
            },
        )
        report = None
        if parity:
            from lightdeploy.pipeline import parity as run_gate
            from lightdeploy.samples import images_from_dir

            progress("running the parity gate on the engine")
            report = run_gate(tmp, images=images_from_dir(images_dir) if images_dir else None, weights=weights)
            report.artifact = folder.name
            write_manifest(tmp, {**manifest, "parity": report.as_dict()})
        seconds = {"build": built - start, "parity": time.perf_counter() - built}
        write_export_log(tmp, seconds, {"built_from": plan["onnx"], "timing_cache_reused": timing_cache_reused})
        if report is not None and not report.passed:
            where = commit_verdict(tmp, folder, passed=False)
            raise ParityError(
                f"{report.summary()}. The engine is kept at {where} with its report for inspection; the build "
                f"plan at {folder} is unchanged.",
                folder=where,
            )
        commit_verdict(tmp, folder, passed=True)
    return report
