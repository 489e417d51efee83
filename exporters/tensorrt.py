"""TensorRT export: a verified build plan on any machine, the engine right away where a GPU is present.

Steps: the pipeline's ``export_onnx`` (node name scopes kept) -> exact rewrites where TensorRT would
reject the graph or compute something else (``trt_prepare``) -> the TensorRT 10 operator check (exit 2
with the report when a node is unsupported) -> FP16: activation ranges and FP32 pins -> INT8: the QDQ
model -> ``trt_plan.json``.  With ``tensorrt`` and a CUDA device the engine is built now
(``backend_file = model.engine``) and the pipeline's parity gate runs on it; elsewhere the artifact's
``backend_file`` is the plan, and ``estimate_parity`` gives the pipeline the CPU estimate to gate on.

The artifact: model.onnx (TensorRT-ready), model.qdq.onnx (--int8), trt_plan.json, and after
``lightdeploy build DIR`` on the GPU machine: model.engine and timing.cache.
"""

from __future__ import annotations

from pathlib import Path

from lightdeploy.errors import UsageError, require
from lightdeploy.exporters.base import ExportJob, ExportResult
from lightdeploy.exporters.tensorrt_plan import (ENGINE_FILE, ONNX_FILE, PLAN_FILE, PLAN_FORMAT, PLAN_VERSION,
                                                 QDQ_FILE, TIMING_CACHE_FILE, Plan, artifact_dir_hint,
                                                 builder_settings, profiles, trtexec_command)

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

    def export(self, job: ExportJob, workdir: Path) -> ExportResult:
        onnx = require("onnx", package="onnx", extra="onnx", purpose="TensorRT export (via ONNX)")
        from lightdeploy.exporters.onnx import export_onnx, graph_io, lightdeploy_metadata
        from lightdeploy.exporters.tensorrt_build import build_engine, trt_environment
        from lightdeploy.trtcheck import check_onnx, check_prepared

        options = job.options
        if options.nhwc:
            raise UsageError("--nhwc is for TFLite; TensorRT takes NCHW input. Drop --nhwc for --to trt.")
        path = workdir / ONNX_FILE
        onnx_info = export_onnx(job, path, metadata=lightdeploy_metadata(job))
        model = onnx.load(str(path))
        check = check_prepared(model, subject=job.spec.name)
        if check.rewrites:  # the plan's ONNX (and the QDQ and FP16 models made from it) is the rewritten graph
            onnx.save(model, str(path))
        if not check.supported:
            raise UsageError(f"{job.spec.name} cannot be built by TensorRT as exported:\n{check.text()}")
        inputs, outputs = graph_io(model)

        precision = options.precision
        plan_onnx, fp16, int8, calib = ONNX_FILE, None, None, None
        if precision in ("fp16", "int8"):
            from lightdeploy.calibration import calibration_set

            calib = calibration_set(job.preprocessing(), batch=1 if options.dynamic_batch else options.batch,
                                    calib_dir=options.calib_dir)
        if precision == "fp16":
            from lightdeploy.exporters.tensorrt_plan import activation_ranges, fp16_pins

            fp16 = fp16_pins(model, activation_ranges(job.model, calib.batches))
            fp16["calibration"] = calib.description
        if precision == "int8":
            from lightdeploy.exporters.tensorrt_plan import make_qdq

            int8 = make_qdq(path, workdir / QDQ_FILE, job.input_name, calib.batches, workdir)
            int8["calibration"] = calib.description
            qdq_check = check_onnx(workdir / QDQ_FILE, subject=f"{job.spec.name} (QDQ)")
            if not qdq_check.supported:
                raise UsageError(f"The INT8 QDQ model of {job.spec.name} is not TensorRT-ready:\n{qdq_check.text()}")
            int8["check"] = qdq_check.summary()
            plan_onnx = QDQ_FILE
        pinned = [layer["node"] for layer in (fp16 or {}).get("layers", [])]
        folder = artifact_dir_hint(workdir)
        plan = {
            "format": PLAN_FORMAT, "version": PLAN_VERSION, "model": job.spec.name, "precision": precision,
            "status": "plan: the engine is built on the target GPU machine",
            "onnx": plan_onnx, "builder": builder_settings(precision, pinned),
            "profiles": profiles(inputs, options), "inputs": inputs, "outputs": outputs,
            "fp32_layers": (fp16 or {}).get("layers", []), "fp16_analysis": fp16, "int8": int8,
            "check": {"summary": check.summary(), "supported": check.supported, "rewrites": check.rewrites,
                      "warnings": [f"{f.node} ({f.op_type}): {f.message}" for f in check.warnings()],
                      "source": check.source, "op_counts": check.op_counts},
            "requirements": REQUIREMENTS, "parity_estimate": None,
        }
        plan["commands"] = {
            "lightdeploy": f"lightdeploy build {folder}",
            "trtexec": f"cd {folder} && {trtexec_command(plan)}",
        }
        available, environment = trt_environment()
        backend_file, engine = PLAN_FILE, None
        if available:
            engine = build_engine(workdir / plan_onnx, plan, workdir / ENGINE_FILE, workdir / TIMING_CACHE_FILE)
            backend_file = ENGINE_FILE
            plan["status"] = f"built: {ENGINE_FILE} (TensorRT {engine['tensorrt_version']}, {engine['gpu']['name']})"
        Plan(plan).write(workdir)
        notes = [] if available else [
            f"TensorRT build plan written; the engine is built on the target GPU machine: {plan['commands']['lightdeploy']}",
            f"or with trtexec: {plan['commands']['trtexec']}",
            f"here: {environment.split('.')[0]}",
        ]
        info = {"onnx": onnx_info, "plan": PLAN_FILE, "plan_onnx": plan_onnx, "check": check.summary(),
                "fp32_layers": len(pinned), "engine": engine, "environment": environment, "notes": notes}
        return ExportResult(self.backend, backend_file, inputs, outputs, info)

    def estimate_parity(self, folder: Path, *, model, images=None):
        """The parity gate for a plan artifact (no engine here): CPU estimates judged by the tensorrt rows.

        Returns None when the artifact holds an engine (the pipeline then runs the real gate on it).
        The estimates are also written into the plan file.
        """
        from lightdeploy.exporters.tensorrt_plan import compact, estimate, read_plan, update_plan
        from lightdeploy.runtimes.manifest import read_manifest

        folder = Path(folder)
        manifest = read_manifest(folder, verify=True)
        if manifest.get("backend_file") != PLAN_FILE:
            return None
        plan = read_plan(folder)
        precision = manifest["precision"]
        report = estimate(folder, precision, model=model, images=images, manifest=manifest, plan=plan)
        estimates = {precision: compact(report)}
        if precision != "fp32":  # the ONNX itself, before any reduced precision, gated at the fp32 row
            fp32 = estimate(folder, "fp32", model=model, images=images, manifest=manifest, plan=plan)
            estimates["fp32"] = compact(fp32)
            report.add_float_graph(fp32)
        update_plan(folder, parity_estimate=estimates)
        return report


EXPORTER = TensorRTExporter()
