"""The instrumented runs of fault localisation for the ONNX-based backends: each returns the artifact's
values of the requested ONNX tensors, its final outputs, and the tensors it could not find.

OpenVINO's IR is built from model.onnx with its channel permutations folded into the convolutions
(``exporters/onnx/permutations.py``), so a shuffled tensor the IR no longer has is rebuilt from the
IR tensors that hold its channels: the same values, gathered in numpy.
"""

from __future__ import annotations

import copy

import numpy as np


def run_onnxruntime(folder, manifest, graph, tensors: list[str], x, threads):
    """ONNX Runtime on a copy of the graph that also returns ``tensors``: (values, final, missing)."""
    from onnx import TensorProto, helper, shape_inference

    from lightdeploy.runtimes.onnxruntime import OnnxRuntimeBackend

    instrumented = copy.deepcopy(graph)
    known = {vi.name: vi for vi in shape_inference.infer_shapes(instrumented).graph.value_info}
    present = {o for n in instrumented.graph.node for o in n.output}
    finals = {o.name for o in instrumented.graph.output}
    missing = {t for t in tensors if t not in present}
    for name in tensors:
        if name in present and name not in finals:
            # the inferred type when there is one; a float tensor of unknown shape otherwise
            instrumented.graph.output.append(
                known.get(name) or helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
            )
    runtime = OnnxRuntimeBackend(instrumented.SerializeToString(), threads=threads)
    try:
        result = runtime.run({manifest["inputs"][0]["name"]: x})
    finally:
        runtime.close()
    final = {o["name"]: result[o["name"]] for o in manifest["outputs"]}
    return {t: result[t] for t in tensors if t not in missing}, final, missing


def run_openvino(folder, manifest, graph, tensors: list[str], x, threads):
    """OpenVINO on the IR read with ``tensors`` added as outputs: (values, final, missing)."""
    import openvino as ov

    from lightdeploy.runtimes.openvino import DEVICE, INFERENCE_PRECISION

    core = ov.Core()
    model = core.read_model(str(folder / manifest["backend_file"]))
    ports = {}
    for op in model.get_ordered_ops():
        for port in op.outputs():
            for name in port.get_names():
                ports.setdefault(name, port)
    rebuilt = _folded_away(graph, [t for t in tensors if t not in ports], ports)
    sources = sorted({src for view in rebuilt.values() for src, _ in view})
    missing = {t for t in tensors if t not in ports and t not in rebuilt}
    found = [t for t in tensors if t in ports]
    finals = [o["name"] for o in manifest["outputs"]]
    if found or sources:
        model.add_outputs([ports[t] for t in dict.fromkeys([*found, *sources])])
    # Pinned to f32 as the artifact's runtime is (runtimes/openvino.py): the CPU plugin's default is bf16
    # on some CPUs, which would charge the plugin's choice to the artifact.
    config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, DEVICE, config)
    result = compiled({manifest["inputs"][0]["name"]: x})
    final = {n: result[compiled.output(n)] for n in finals}
    by_name = {name: port for port in compiled.outputs for name in port.get_names()}
    values = {t: result[by_name[t]] for t in found}
    for t, view in rebuilt.items():
        values[t] = np.stack([result[by_name[src]][:, ch] for src, ch in view], axis=1)
    return values, final, missing


def _folded_away(graph, absent: list[str], ports: dict) -> dict:
    """{tensor: view} for the ``absent`` tensors that the exporter's channel-permutation fold removed
    (``exporters/onnx/permutations.py``) and that the IR's tensors rebuild exactly."""
    if not absent:
        return {}
    from lightdeploy.exporters.onnx.permutations import removed_tensors

    views = removed_tensors(graph)
    return {t: views[t] for t in absent if t in views and all(src in ports for src, _ in views[t])}
