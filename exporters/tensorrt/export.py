"""TensorRT export: a verified build plan on any machine, the engine right away where a GPU is present.

Steps: ``write_onnx`` (node name scopes kept) -> exact rewrites where TensorRT would reject the graph or
compute something else (``prepare.py``) -> the TensorRT 10 operator check (exit 2 with the report when
a node is unsupported) -> FP16: activation ranges and FP32 pins (``fp16.py``) -> INT8: the QDQ model
(``qdq.py``) -> ``trt_plan.json`` + ``build_engine.sh`` (``plan.py``).  With ``tensorrt`` and a CUDA
device the engine is built now (``backend_file = model.engine``) and the gate runs on it; elsewhere
``backend_file`` is the plan and the gate runs the CPU estimate (``estimate.py``).

The artifact: model.onnx (TensorRT-ready), model.qdq.onnx (--int8), trt_plan.json, build_engine.sh,
and after ``lightdeploy build DIR`` on the GPU machine: model.engine and timing.cache.
"""

from __future__ import annotations

from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.exporters.base import ExportJob, ExportResult
from lightdeploy.exporters.onnx.export import ONNX_FILE, write_onnx
from lightdeploy.exporters.onnx.graph import graph_io
from lightdeploy.exporters.tensorrt.check import check_onnx, check_prepared
from lightdeploy.exporters.tensorrt.estimate import estimate_plan
from lightdeploy.exporters.tensorrt.plan import (
    BUILD_SCRIPT,
    PLAN_FORMAT,
    PLAN_VERSION,
    builder_settings,
    profiles,
    write_plan,
)
from lightdeploy.runtimes._tensorrt_env import ENGINE_FILE, PLAN_FILE, TIMING_CACHE_FILE, trt_environment

REQUIREMENTS = {
    "tensorrt": ">=10.0,<11 (Python package 'tensorrt', from https://pypi.nvidia.com)",
    "cuda-python": ">=12",
    "gpu": "an NVIDIA GPU with its CUDA driver",
    "install": "pip install 'lightdeploy[trt]' --extra-index-url https://pypi.nvidia.com",
}


class TensorRTExporter:
    target = "trt"
    backend = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    estimator = staticmethod(estimate_plan)  # a plan without its engine is gated on the CPU estimate

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        self._validate(job)
        return self._export_impl(job, workdir)

    def _validate(self, job: ExportJob) -> None:
        if job.options.nhwc:
            raise UsageError("--nhwc is for TFLite; TensorRT takes NCHW input. Drop --nhwc for --to trt.")

    def _export_impl(self, job: ExportJob, workdir: Path) -> ExportResult:
        import onnx

        options, precision = job.options, job.options.precision
        onnx_info, model = write_onnx(job, workdir)
        check = check_prepared(model, subject=job.spec.name)
        if check.rewrites:  # the plan's ONNX (and the QDQ and FP16 models made from it) is the rewritten graph
            onnx.save(model, str(workdir / ONNX_FILE))
        if not check.supported:
            raise UsageError(f"{job.spec.name} cannot be built by TensorRT as exported:\n{check.text()}")
        inputs, outputs = graph_io(model)

        fp16 = int8 = calib = None
        plan_onnx = ONNX_FILE
        if precision in ("fp16", "int8"):
            from lightdeploy.calibration import calibration_set

            calib = calibration_set(
                job.preprocessing(), batch=1 if options.dynamic_batch else options.batch, calib_dir=options.calib_dir
            )
        if precision == "fp16":
            from lightdeploy.exporters.tensorrt.fp16 import activation_ranges, fp16_pins

            ranges = activation_ranges(job.model, calib.counted(job.count))
            fp16 = {**fp16_pins(model, ranges), "calibration": calib.description}
        if precision == "int8":
            from lightdeploy.exporters.tensorrt.qdq import QDQ_FILE, make_qdq

            int8 = make_qdq(workdir / ONNX_FILE, workdir / QDQ_FILE, job.input_name, calib.batches, workdir, job=job)
            int8["calibration"] = calib.description
            qdq_check = check_onnx(workdir / QDQ_FILE, subject=f"{job.spec.name} (QDQ)")
            if not qdq_check.supported:
                raise UsageError(f"The INT8 QDQ model of {job.spec.name} is not TensorRT-ready:\n{qdq_check.text()}")
            int8["check"] = qdq_check.summary()
            plan_onnx = QDQ_FILE
        plan = make_plan(job, precision, plan_onnx, inputs, outputs, check, fp16=fp16, int8=int8)

        available, environment = trt_environment()
        backend_file, engine = PLAN_FILE, None
        if available:
            from lightdeploy.runtimes._tensorrt_build import build_engine

            engine = build_engine(workdir / plan_onnx, plan, workdir / ENGINE_FILE, workdir / TIMING_CACHE_FILE)
            backend_file = ENGINE_FILE
            plan["status"] = f"built: {ENGINE_FILE} (TensorRT {engine['tensorrt_version']}, {engine['gpu']['name']})"
        write_plan(workdir, plan)
        notes = (
            []
            if available
            else [
                "TensorRT build plan written; build the engine on the target GPU machine with "
                f"`lightdeploy build {{artifact}}`, or with trtexec: `sh {{artifact}}/{BUILD_SCRIPT}`",
                f"here: {environment.split('.')[0]}",
            ]
        )
        info = {
            "calibration": calib.description if calib is not None else None,
            "onnx": onnx_info,
            "plan": PLAN_FILE,
            "plan_onnx": plan_onnx,
            "check": check.summary(),
            "fp32_layers": len(plan["fp32_layers"]),
            "engine": engine,
            "environment": environment,
            "notes": notes,
        }

        def float_twin(folder: Path) -> str:
            """The plan's float graph as an fp32 plan (estimated on the CPU wherever it is gated)."""
            (folder / ONNX_FILE).write_bytes((workdir / ONNX_FILE).read_bytes())
            write_plan(folder, make_plan(job, "fp32", ONNX_FILE, inputs, outputs, check))
            return PLAN_FILE

        twin = float_twin if precision != "fp32" else None
        return ExportResult(self.backend, backend_file, inputs, outputs, info, float_twin=twin)


def make_plan(
    job: ExportJob,
    precision: str,
    plan_onnx: str,
    inputs: list[dict],
    outputs: list[dict],
    check,
    *,
    fp16: dict | None = None,
    int8: dict | None = None,
) -> dict:
    """The content of trt_plan.json (plan.py documents the fields)."""
    pinned = [layer["node"] for layer in (fp16 or {}).get("layers", [])]
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "model": job.spec.name,
        "precision": precision,
        "status": "plan: the engine is built on the target GPU machine",
        "onnx": plan_onnx,
        "builder": builder_settings(precision, pinned),
        "profiles": profiles(inputs, job.options),
        "inputs": inputs,
        "outputs": outputs,
        "fp32_layers": (fp16 or {}).get("layers", []),
        "fp16_analysis": fp16,
        "int8": int8,
        "check": {
            "summary": check.summary(),
            "supported": check.supported,
            "rewrites": check.rewrites,
            "warnings": [f"{f.node} ({f.op_type}): {f.message}" for f in check.warnings()],
            "source": check.source,
            "op_counts": check.op_counts,
        },
        "requirements": REQUIREMENTS,
        "commands": {"lightdeploy": "lightdeploy build ARTIFACT_DIR", "trtexec": f"sh {BUILD_SCRIPT}"},
    }
