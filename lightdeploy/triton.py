"""``lightdeploy triton ARTIFACT_DIR... --repo OUT``: a Triton Inference Server model repository.

Each verified artifact becomes ``OUT/NAME/`` (NAME: the artifact folder's name)::

    OUT/NAME/config.pbtxt               platform / backend, inputs, outputs, batching, instance groups
    OUT/NAME/1/model.onnx               onnx artifacts        (platform "onnxruntime_onnx")
    OUT/NAME/1/model.xml + model.bin    openvino artifacts    (backend "openvino")
    OUT/NAME/1/model.plan               built TensorRT engines (platform "tensorrt_plan")
    OUT/NAME/labels.txt                 classifiers with class names (Triton's classification extension)
    OUT/NAME/lightdeploy_manifest.json  the artifact's manifest: the preprocessing a client applies

The config follows Triton's model-configuration rules (docs/triton.md): an artifact whose every input
and output has a dynamic first dimension gets ``max_batch_size`` > 0, dims without the batch and
``dynamic_batching``; any other artifact gets ``max_batch_size: 0`` and its full shapes.  Dynamic
non-batch dims are -1.  TFLite artifacts have no official Triton backend and TensorRT build plans no
engine yet: both are refused with what to do instead.  Each model folder is written in a staging
folder and renamed into place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lightdeploy.errors import UsageError

# numpy dtype name -> Triton's model-configuration data type
DATA_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
# backend -> (config line naming Triton's backend, {artifact file: file in the version folder}, instance kind)
SERVING = {
    "onnxruntime": ('platform: "onnxruntime_onnx"', {"{backend_file}": "model.onnx"}, "KIND_CPU"),
    "openvino": ('backend: "openvino"', {"{backend_file}": "model.xml", "{backend_stem}.bin": "model.bin"}, "KIND_CPU"),
    "tensorrt": ('platform: "tensorrt_plan"', {"{backend_file}": "model.plan"}, "KIND_GPU"),
}
DEFAULT_MAX_BATCH = 8
OPENVINO_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def write_repository(
    artifacts: list[str | Path],
    repo: str | Path,
    *,
    instances: int = 1,
    max_batch: int | None = None,
    mode: str = "latency",
    allow_unverified: bool = False,
) -> list[Path]:
    """Write one Triton model folder per artifact into ``repo``; return the model folders.  Every
    artifact is verified (hashes, paths, parity verdict) before anything is written."""
    from lightdeploy.artifact import check_writable, commit, staging_folder
    from lightdeploy.runtimes import verify

    if instances < 1:
        raise UsageError(f"--instances must be at least 1; got {instances}.")
    if max_batch is not None and max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1; got {max_batch}.")
    if mode not in OPENVINO_HINTS:
        raise UsageError(f"--mode must be one of {', '.join(OPENVINO_HINTS)}; got {mode!r}.")
    repo = Path(repo)
    check_writable(repo)
    checked = []
    for artifact in artifacts:
        folder = Path(artifact)
        manifest = verify(folder, allow_unverified=allow_unverified)
        _check_servable(folder, manifest)
        checked.append((folder, manifest))
    names = [folder.name for folder, _ in checked]
    if len(set(names)) != len(names):
        raise UsageError(f"Two artifacts have the same folder name (a Triton model name): {sorted(names)}.")
    written = []
    for folder, manifest in checked:
        final = repo / folder.name
        with staging_folder(final) as tmp:
            _write_model(folder, manifest, tmp, instances=instances, max_batch=max_batch, mode=mode)
            commit(tmp, final)
        written.append(final)
    return written


def _check_servable(folder: Path, manifest: dict) -> None:
    backend = manifest["backend"]
    if backend == "tflite":
        raise UsageError(
            f"{str(folder)!r} is a TFLite artifact; Triton has no official TFLite backend. Serve the onnx or "
            "openvino artifact of the same model (export it with --to onnx / --to openvino)."
        )
    if backend == "tensorrt" and manifest["backend_file"] != "model.engine":
        raise UsageError(
            f"{str(folder)!r} is a TensorRT build plan without an engine. Build it on a GPU with the TensorRT "
            f"version of your Triton container (`lightdeploy build {folder}`), then run this again."
        )
    if backend not in SERVING:
        raise UsageError(f"{str(folder)!r}: backend {backend!r} has no Triton backend here.")


def _write_model(folder: Path, manifest: dict, out: Path, *, instances: int, max_batch: int | None, mode: str):
    backend_line, files, kind = SERVING[manifest["backend"]]
    version = out / "1"
    version.mkdir()
    backend_file = manifest["backend_file"]
    for source, target in files.items():
        source = source.format(backend_file=backend_file, backend_stem=str(Path(backend_file).with_suffix("")))
        shutil.copyfile(folder / source, version / target)
    shutil.copyfile(folder / "manifest.json", out / "lightdeploy_manifest.json")
    labels = None
    if manifest.get("task") == "classify" and manifest.get("class_names"):
        labels = "labels.txt"
        (out / labels).write_text("\n".join(manifest["class_names"]) + "\n")
    batch = _max_batch_size(folder, manifest, max_batch)
    (out / "config.pbtxt").write_text(
        config_text(manifest, folder.name, backend_line, batch, instances, kind, labels, mode)
    )


def _max_batch_size(folder: Path, manifest: dict, requested: int | None) -> int:
    """0 unless every input and output has a dynamic first dim; then the engine's profile maximum
    (TensorRT), else ``requested`` or DEFAULT_MAX_BATCH."""
    tensors = manifest["inputs"] + manifest["outputs"]
    if not all(t["shape"] and not isinstance(t["shape"][0], int) for t in tensors):
        if requested is not None:
            raise UsageError(
                f"{str(folder)!r} has a fixed batch ({manifest['inputs'][0]['shape'][0]}); --max-batch needs an "
                "artifact exported with --dynamic-batch."
            )
        return 0
    if manifest["backend"] == "tensorrt":
        plan = json.loads((folder / "trt_plan.json").read_text())
        limit = min(p[manifest["inputs"][0]["name"]]["max"][0] for p in plan["profiles"])
        if requested is not None and requested > limit:
            raise UsageError(
                f"The engine's optimisation profile allows batches up to {limit}; --max-batch {requested}."
            )
        return requested or limit
    return requested or DEFAULT_MAX_BATCH


def config_text(
    manifest: dict, name: str, backend_line: str, max_batch: int, instances: int, kind: str, labels, mode: str
) -> str:
    """config.pbtxt in protobuf text format (tritonclient's model_config_pb2.ModelConfig parses it)."""
    lines = [f'name: "{name}"', backend_line, f"max_batch_size: {max_batch}"]
    for section, tensors in (("input", manifest["inputs"]), ("output", manifest["outputs"])):
        entries = []
        for t in tensors:
            entries.append(_tensor(t, max_batch > 0, labels if section == "output" and t is tensors[0] else None))
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if max_batch > 0:
        lines.append("dynamic_batching { }")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    if manifest["backend"] == "openvino":
        lines.append(_parameter("PERFORMANCE_HINT", OPENVINO_HINTS[mode]))
    return "\n".join(lines) + "\n"


def _tensor(t: dict, batched: bool, label_file: str | None) -> str:
    if t["dtype"] not in DATA_TYPES:
        raise UsageError(f"Tensor {t['name']!r} has dtype {t['dtype']}, which Triton's model config cannot express.")
    dims = [d if isinstance(d, int) else -1 for d in t["shape"]]
    reshape = ""
    if batched:
        dims = dims[1:]
        if not dims:  # a per-image scalar: Triton needs rank >= 1, so [1] reshaped to []
            dims, reshape = [1], "\n    reshape: { shape: [ ] }"
    fields = [f'    name: "{t["name"]}"', f"    data_type: {DATA_TYPES[t['dtype']]}"]
    fields.append(f"    dims: [ {', '.join(map(str, dims))} ]" + reshape)
    if label_file:
        fields.append(f'    label_filename: "{label_file}"')
    return "  {\n" + "\n".join(fields) + "\n  }"


def _parameter(key: str, value: str) -> str:
    return f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'
