"""Fault localisation: the first nn.Module whose output leaves the artifact's tolerance row.

When an artifact fails its gate, the final outputs say *that* it differs, not *where*.  This module
runs one photograph through eager PyTorch with a forward hook on every module, and through an
instrumented copy of the artifact whose graph also returns each module's output tensor; then it
compares module by module, in the order eager finished them, with the row's own tensor checks
(``metrics.tensor_checks``).  The first module that fails them is where the fault enters.

Which tensor is a module's output: the exporter records in each ONNX node which modules made it
(``lightdeploy.modulepaths``); the output of the *last* node (in graph order) inside a module is taken
as the module's output, and kept only when its shape equals the eager hook's.  OpenVINO keeps the ONNX
tensor names of the IR it was converted from (``model.onnx`` beside ``model.xml``), so the same names
find the same tensors there; an int8 IR's FakeQuantize ops sit after them, so the value compared is
the module's output before it is quantised for the next module.

The artifact's own files are not changed: ONNX Runtime runs a copy of the graph with extra outputs,
OpenVINO a model read from the IR with ``Model.add_outputs``, LiteRT a re-conversion of the eager model
with the module outputs exposed (``lightdeploy.localize.tflite``).  Extra outputs can stop a runtime fusing
ops across them, so the instrumented copy's final outputs are compared with the artifact's own: when
they differ beyond the row, the report says the localisation is unreliable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lightdeploy.errors import UsageError
from lightdeploy.localize.runners import run_onnxruntime, run_openvino
from lightdeploy.modulepaths import node_scopes
from lightdeploy.parity.gate import REFERENCE_DTYPE
from lightdeploy.parity.inputs import BOTH, parity_inputs, to_batches
from lightdeploy.parity.metrics import TASK_JUDGED_OUTPUTS, Check, tensor_checks, tensor_stats
from lightdeploy.parity.tolerances import Tolerance, tolerance_for

SUPPORTED_BACKENDS = ("onnxruntime", "openvino", "tflite")
ONNX_FILE = "model.onnx"  # the exported graph: the ORT artifact itself, the IR's source for OpenVINO
NEXT_SHOWN = 2  # modules shown after the first divergent one: does the error grow or fade?


@dataclass
class ModuleResult:
    path: str
    op_types: list[str]  # the ONNX op types of the module's nodes, in graph order
    shape: tuple
    cosine: float
    max_abs: float
    checks: list[Check]

    @property
    def diverged(self) -> bool:
        return not all(c.passed for c in self.checks)

    def describe(self) -> str:
        failed = [c for c in self.checks if not c.passed] or self.checks
        judged = "; ".join(f"{c.metric} {c.value:.6g} (limit {c.op} {c.limit:.6g})" for c in failed)
        return f"{self.path} [{', '.join(self.op_types)}] {list(self.shape)}: {judged}"


@dataclass
class LocalizeReport:
    artifact: str
    backend: str
    precision: str
    tolerance: dict
    input_name: str
    modules: list[ModuleResult]  # every compared module, in the order eager finished them
    skipped: dict[str, list[str]]  # reason -> module paths not compared
    instrumented_max_abs: float  # instrumented copy vs the artifact's own final outputs
    reliable: bool
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> ModuleResult | None:
        """The first module whose output fails the row, or None."""
        return next((m for m in self.modules if m.diverged), None)

    @property
    def following(self) -> list[ModuleResult]:
        """The ``NEXT_SHOWN`` compared modules after the first divergent one."""
        first = self.first
        if first is None:
            return []
        at = self.modules.index(first)
        return self.modules[at + 1 : at + 1 + NEXT_SHOWN]

    def summary(self) -> str:
        skipped = sum(len(v) for v in self.skipped.values())
        head = (
            f"localisation of {self.artifact} ({self.backend}/{self.precision}, input {self.input_name}): "
            f"{len(self.modules)} modules compared, {skipped} skipped"
        )
        lines = [head]
        first = self.first
        if first is None:
            lines.append("  no module's output leaves the tolerance row on this input")
        else:
            lines.append(f"  first divergent module: {first.describe()}")
            lines += [f"  then: {m.describe()}" for m in self.following]
        for reason, paths in self.skipped.items():
            shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            lines.append(f"  skipped {len(paths)} ({reason}): {shown}")
        if not self.reliable:
            lines.append(
                f"  UNRELIABLE: the instrumented copy's outputs differ from the artifact's own "
                f"(max abs {self.instrumented_max_abs:.3g}); extra outputs changed how the runtime computes"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        first = self.first
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "precision": self.precision,
            "tolerance": self.tolerance,
            "input": self.input_name,
            "first_divergent": first.path if first else None,
            "modules": [
                {
                    "path": m.path,
                    "op_types": m.op_types,
                    "shape": list(m.shape),
                    "cosine": m.cosine,
                    "max_abs": m.max_abs,
                    "diverged": m.diverged,
                }
                for m in self.modules
            ],
            "skipped": self.skipped,
            "instrumented_max_abs": self.instrumented_max_abs,
            "reliable": self.reliable,
            "notes": self.notes,
        }


def check_localizable(manifest: dict) -> None:
    """Raise UsageError for an artifact whose backend localisation does not cover yet."""
    backend = manifest.get("backend")
    if backend not in SUPPORTED_BACKENDS:
        raise UsageError(
            f"Localisation is not available for {backend} artifacts yet (only "
            f"{', '.join(SUPPORTED_BACKENDS)}); run `lightdeploy parity` without --localize, or localise "
            "the same model exported with --to onnx or --to openvino."
        )
    if backend == "tflite":
        from lightdeploy.localize.tflite import check_tflite_localizable

        check_tflite_localizable(manifest)


def localize(
    artifact_dir: str | Path,
    *,
    model: torch.nn.Module | None = None,
    images: dict[str, np.ndarray] | None = None,
    tolerance: Tolerance | None = None,
    threads: int | None = None,
) -> LocalizeReport:
    """Find the first module of the artifact in ``artifact_dir`` whose output diverges from eager
    PyTorch beyond the artifact's tolerance row (or ``tolerance``), on its first photograph.

    ``model``: the eager model (rebuilt from the manifest if not given); ``images``: photographs to
    use instead of the built-in ones (the first is used).
    """
    from lightdeploy.runtimes.manifest import read_manifest

    folder = Path(artifact_dir)
    manifest = read_manifest(folder, verify=True)  # a folder without a manifest is refused by name here
    check_localizable(manifest)
    if not (folder / ONNX_FILE).is_file():
        raise UsageError(
            f"Artifact {str(folder)!r} has no {ONNX_FILE}: localisation maps modules through the exported ONNX "
            "graph. Re-export the artifact."
        )
    if model is None:
        from lightdeploy.factory import eager_from_manifest

        model = eager_from_manifest(manifest)
    tol = tolerance or tolerance_for(manifest["backend"], manifest["precision"])
    return _localize_impl(folder, manifest, model, images, tol, threads)


def _localize_impl(folder: Path, manifest: dict, model, images, tol: Tolerance, threads) -> LocalizeReport:
    import onnx

    photos = [p for p in parity_inputs(manifest, images) if p.role == BOTH]
    photo = photos[0] if not images else next(p for p in photos if p.name in images)
    names, x, _ = to_batches([photo], manifest["inputs"][0]["shape"][0])[0]
    layout = manifest["preprocessing"].get("layout", "NCHW")

    graph = onnx.load(str(folder / ONNX_FILE))
    tensors, op_types = module_tensors(graph)
    eager64, skipped = eager_module_outputs(model, x, layout, REFERENCE_DTYPE)
    eager32, _ = eager_module_outputs(model, x, layout, torch.float32)

    wanted = {}  # module path -> ONNX tensor name, for the modules both sides have
    for path in eager64:
        if path in tensors:
            wanted[path] = tensors[path]
        else:
            skipped.setdefault("no ONNX node of its own (folded into a neighbour, or no op)", []).append(path)
    if manifest["backend"] == "tflite":
        got, final, missing = _run_tflite(folder, manifest, model, wanted, x, threads)
    else:
        run = run_onnxruntime if manifest["backend"] == "onnxruntime" else run_openvino
        got, final, missing = run(folder, manifest, graph, sorted(set(wanted.values())), x, threads)
    own = _artifact_outputs(folder, manifest, x, threads)
    instrumented_max_abs, reliable, judged = _agreement(final, own, manifest["task"], tol)

    modules = []
    for path, tensor in wanted.items():
        if tensor in missing:
            skipped.setdefault(f"tensor not found in the {manifest['backend']} graph", []).append(path)
        elif got[tensor].shape != eager64[path].shape:
            skipped.setdefault("output shape differs from eager's (not the module's output)", []).append(path)
        else:
            modules.append(_judge(path, op_types[path], eager64[path], eager32[path], got[tensor], tol))
    report = LocalizeReport(
        artifact=folder.name,
        backend=manifest["backend"],
        precision=manifest["precision"],
        tolerance=tol.as_dict(),
        input_name=names[0],
        modules=modules,
        skipped=skipped,
        instrumented_max_abs=instrumented_max_abs,
        reliable=reliable,
    )
    if not judged:
        report.notes.append("the instrumented copy was not checked against the artifact (only ranked outputs)")
    if not modules:
        report.notes.append("no module could be matched between eager and the graph: nothing was compared")
    return report


def _judge(path: str, op_types: list[str], ref, ref32, value, tol: Tolerance) -> ModuleResult:
    """One module's output judged by the row's tensor checks, as the gate judges a final output (the
    fp32 max-abs limit never stricter than 2x eager float32's own error)."""
    stats = tensor_stats([ref], [value])
    stats["eager_fp32_max_abs"] = tensor_stats([ref], [ref32])["max_abs"]
    checks = tensor_checks(path, stats, tol)
    return ModuleResult(path, op_types, ref.shape, stats["cosine"], stats["max_abs"], checks)


def _agreement(final: dict, own: dict, task: str, tol: Tolerance) -> tuple[float, bool, list[str]]:
    """(max abs difference, within the row?, outputs compared) of the instrumented copy's final outputs
    against the artifact's own.  Ranked detection lists may swap slots on float noise, and integer
    outputs are the task's: only the other float outputs are compared."""
    ranked = TASK_JUDGED_OUTPUTS.get(task, ())
    judged = [n for n in own if np.issubdtype(own[n].dtype, np.floating) and n not in ranked]
    diffs = [float(np.abs(final[n].astype(np.float64) - own[n]).max()) if own[n].size else 0.0 for n in judged]
    within = all(
        all(c.passed for c in tensor_checks(n, tensor_stats([own[n].astype(np.float64)], [final[n]]), tol))
        for n in judged
    )
    return max(diffs, default=0.0), within, judged


# ----------------------------------------------------------------------------------- the two sides
def module_tensors(graph) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({module path: its output tensor}, {module path: its op types}) of an ONNX graph: the output is
    that of the module's last node in graph order (a topological order), when that node has one output."""
    last, ops = {}, {}
    for node in graph.graph.node:
        for path in node_scopes(node)[:-1]:  # the last scope names the fx node, not a module
            last[path] = node
            ops.setdefault(path, {})[node.op_type] = None  # each type once, in order of first use
    tensors = {path: node.output[0] for path, node in last.items() if len(node.output) == 1}
    return tensors, {path: list(types) for path, types in ops.items()}


@torch.no_grad()
def eager_module_outputs(model, x: np.ndarray, layout: str, dtype) -> tuple[dict, dict[str, list[str]]]:
    """({module path: output}, skipped) of one eager run, in the order the modules finished.

    A module called more than once (a shared activation) has no single output to compare, nor has one
    that returns something other than a tensor; both are skipped and named."""
    model = copy.deepcopy(model).to(dtype).eval()
    outputs, calls = {}, {}

    def hook(path):
        def record(module, args, output):
            calls[path] = calls.get(path, 0) + 1
            # a copy: an in-place op after the module (ReLU(inplace=True)) would change a shared view
            outputs[path] = output.detach().cpu().numpy().copy() if isinstance(output, torch.Tensor) else None

        return record

    handles = [m.register_forward_hook(hook(path)) for path, m in model.named_modules() if path]
    try:
        t = torch.from_numpy(x).to(dtype)
        model(t.permute(0, 3, 1, 2).contiguous() if layout == "NHWC" else t)
    finally:
        for h in handles:
            h.remove()
    skipped: dict[str, list[str]] = {}
    kept = {}
    for path, value in outputs.items():
        if calls[path] > 1:
            skipped.setdefault("called more than once", []).append(path)
        elif value is None:
            skipped.setdefault("output is not a tensor", []).append(path)
        else:
            kept[path] = value
    return kept, skipped


def _run_tflite(folder, manifest, model, wanted: dict[str, str], x, threads):
    """LiteRT on a re-conversion that also returns the modules' outputs (``lightdeploy.localize.tflite``), keyed
    like the other backends by the ONNX tensor each module ends in: (values, final, missing)."""
    from lightdeploy.localize.tflite import run_tflite

    by_tensor = {}  # one module per tensor: nested modules that end in the same node share it
    for path, tensor in wanted.items():
        by_tensor.setdefault(tensor, path)
    values, final = run_tflite(folder, manifest, model, list(by_tensor.values()), x, threads)
    return {tensor: values[path] for tensor, path in by_tensor.items()}, final, set()


def _artifact_outputs(folder: Path, manifest: dict, x: np.ndarray, threads) -> dict[str, np.ndarray]:
    """The artifact's own final outputs on ``x``, run as the gate runs it."""
    from lightdeploy.runtimes import open_runtime

    runtime = open_runtime(folder, manifest, threads, allow_unverified=True)
    try:
        return runtime.run({manifest["inputs"][0]["name"]: x})
    finally:
        runtime.close()
