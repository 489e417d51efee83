"""The parity gate: run eager PyTorch and an artifact on the same inputs, then compare.

Running (``run_eager``, ``run_artifact``) is separate from comparing (``compare``), so a report can
be recomputed from saved outputs and each half tested on its own.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lightdeploy.logs import Count
from lightdeploy.parity.estimate import Estimator
from lightdeploy.parity.inputs import BOTH, REPORTED, TASK, TENSOR, parity_inputs, to_batches
from lightdeploy.parity.metrics import (
    NOISE_FLOOR_FACTOR,
    TASK_JUDGED_OUTPUTS,
    task_checks_for,
    tensor_checks,
    tensor_stats,
)
from lightdeploy.parity.report import ParityReport
from lightdeploy.parity.tolerances import Tolerance, tolerance_for

Outputs = dict[str, list[np.ndarray]]  # output name -> one array per batch, in input order

# The eager reference runs in float64: on deep random-weight cascades (DFANet) eager float32 is itself
# as far from the exact function as the fp32 tolerance, and judging an fp32 artifact against another
# float32 rounding would charge the reference's own error to the artifact (docs/measurements.md#noise-floor).
REFERENCE_DTYPE = torch.float64


def run_parity(
    folder: str | Path,
    *,
    model: torch.nn.Module | None = None,
    images: dict[str, np.ndarray] | None = None,
    tolerance: Tolerance | None = None,
    threads: int | None = None,
    estimator: Estimator | None = None,
    count: Count | None = None,
) -> ParityReport:
    """Check the artifact in ``folder`` against eager PyTorch (rebuilt from the manifest if not given).

    ``estimator``: the artifact's backend hook (``estimate.py``) for artifacts that cannot run here.
    ``count(done, total, what)``: called after each of the runs (eager float64, eager float32 and the
    artifact on every input batch), for a progress display.
    """
    from lightdeploy.runtimes import open_runtime
    from lightdeploy.runtimes.manifest import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder, verify=True)
    if model is None:
        from lightdeploy.factory import eager_from_manifest

        model = eager_from_manifest(manifest)
    estimate = estimator(folder, manifest, threads) if estimator is not None else None
    if estimate is None:  # the gate is what gives an artifact its verdict: it runs one that has none yet
        estimate = (open_runtime(folder, manifest, threads, allow_unverified=True), "")
    runtime, method = estimate
    inputs = parity_inputs(manifest, images)
    batches = to_batches(inputs, manifest["inputs"][0]["shape"][0])
    names = [o["name"] for o in manifest["outputs"]]
    layout = manifest["preprocessing"].get("layout", "NCHW")
    runs = itertools.count(1)
    tick = (lambda: count(next(runs), 3 * len(batches), "runs")) if count else (lambda: None)
    eager = run_eager(model, batches, names, layout, tick=tick)
    eager32 = run_eager(model, batches, names, layout, dtype=torch.float32, tick=tick)
    artifact = run_artifact(runtime, batches, manifest, tick=tick)
    tol = tolerance or tolerance_for(manifest["backend"], manifest["precision"])
    report = compare(
        eager,
        artifact,
        manifest,
        tol,
        [p.name for p in inputs],
        artifact_name=folder.name,
        eager32=eager32,
        roles=[role for _, _, role in batches],
    )
    if method:
        report.estimated, report.method = True, method
        report.notes.append(f"estimated on the CPU: {method}; the artifact itself is gated where it runs")
    return report


@torch.no_grad()
def run_eager(
    model: torch.nn.Module,
    batches,
    output_names: list[str],
    layout: str = "NCHW",
    dtype: torch.dtype = REFERENCE_DTYPE,
    tick: Callable[[], None] = lambda: None,
) -> Outputs:
    out: Outputs = {n: [] for n in output_names}
    model = copy.deepcopy(model).to(dtype).eval()
    for _, x, _ in batches:
        t = torch.from_numpy(x).to(dtype)
        if layout == "NHWC":
            t = t.permute(0, 3, 1, 2).contiguous()
        result = model(t)
        result = result if isinstance(result, (tuple, list)) else (result,)
        for name, value in zip(output_names, result):
            out[name].append(value.detach().cpu().numpy())
        tick()
    return out


def run_artifact(runtime, batches, manifest: dict, tick: Callable[[], None] = lambda: None) -> Outputs:
    input_name = manifest["inputs"][0]["name"]
    layouts = {o["name"]: o.get("layout") for o in manifest["outputs"]}
    out: Outputs = {o["name"]: [] for o in manifest["outputs"]}
    for _, x, _ in batches:
        result = runtime.run({input_name: x})
        for name in out:
            value = result[name]
            if layouts[name] == "NHWC":  # compare in eager's NCHW
                value = value.transpose(0, 3, 1, 2)
            out[name].append(value)
        tick()
    return out


def compare(
    eager: Outputs,
    artifact: Outputs,
    manifest: dict,
    tol: Tolerance,
    input_names: list[str],
    artifact_name: str = "",
    eager32: Outputs | None = None,
    roles: list[str] | None = None,
) -> ParityReport:
    """Judge ``artifact`` against the float64 ``eager`` outputs.

    ``roles``: each batch's role (``inputs.BOTH`` / ``TASK`` / ``TENSOR`` / ``REPORTED``: which metrics
    it serves; default: both for every batch).  ``REPORTED`` batches are judged by nothing: their tensor
    stats go into the report as ``OUTPUT["reported_inputs"]``, with a note.

    ``eager32`` (eager PyTorch in float32) measures each output's reference noise floor: how far a
    float32 evaluation of the same model already is from the exact one.  An fp32 artifact may not be
    judged stricter than eager float32 itself can be, so its max-abs limit is the table's limit or
    ``NOISE_FLOOR_FACTOR`` x that floor, whichever is larger; the report shows both.
    """
    checks, stats = [], {}
    roles = roles or [BOTH] * len(next(iter(eager.values())))

    def serving(outputs: Outputs | None, *served: str) -> Outputs | None:
        return (
            None if outputs is None else {n: [v for v, r in zip(vs, roles) if r in served] for n, vs in outputs.items()}
        )

    task_eager, task_artifact = serving(eager, BOTH, TASK), serving(artifact, BOTH, TASK)
    noise_eager, noise_artifact = serving(eager, REPORTED), serving(artifact, REPORTED)
    eager, artifact, eager32 = (
        serving(eager, BOTH, TENSOR),
        serving(artifact, BOTH, TENSOR),
        serving(eager32, BOTH, TENSOR),
    )
    judged_by_task = TASK_JUDGED_OUTPUTS.get(manifest["task"], ())
    for name, ref in eager.items():
        got = artifact[name]
        shapes = [(r.shape, g.shape) for r, g in zip(ref, got) if r.shape != g.shape]
        if shapes:
            raise ValueError(f"output {name!r}: artifact shape {shapes[0][1]} != eager shape {shapes[0][0]}")
        if not np.issubdtype(ref[0].dtype, np.floating):
            continue  # integer outputs (labels, masks, counts) are judged by the task metric
        stats[name] = tensor_stats(ref, [g.astype(np.float32) for g in got])
        if eager32 is not None:
            stats[name]["eager_fp32_max_abs"] = tensor_stats(ref, eager32[name])["max_abs"]
        if noise_eager[name]:
            noise = [g.astype(np.float32) for g in noise_artifact[name]]
            stats[name]["reported_inputs"] = tensor_stats(noise_eager[name], noise)
        if name in judged_by_task:
            continue  # a ranked, fixed-size list (detections): the task metric matches it by IoU
        checks += tensor_checks(name, stats[name], tol, NOISE_FLOOR_FACTOR)
    task_fn = task_checks_for(manifest["task"])
    task_info: dict = {}
    if task_fn is not None:
        task_checks, task_info = task_fn(task_eager, task_artifact, tol, list(eager))
        task_info["judged_batches"] = sum(r in (BOTH, TASK) for r in roles)
        checks += task_checks
    shown = [
        f"{n} worst cosine {s['reported_inputs']['cosine']:.4f}"
        for n, s in stats.items()
        if "reported_inputs" in s and n not in judged_by_task
    ]
    notes = (
        [
            f"the N(0, 1) noise inputs are reported, not gated, at {manifest['precision']} ({', '.join(shown)}): "
            "its ranges are calibrated on photographs (docs/design.md#parity)"
        ]
        if shown
        else []
    )
    return ParityReport(
        artifact=artifact_name or manifest["model"],
        model=manifest["model"],
        backend=manifest["backend"],
        precision=manifest["precision"],
        tolerance=tol.as_dict(),
        inputs=input_names,
        outputs=stats,
        checks=checks,
        task_info=task_info,
        notes=notes,
    )
