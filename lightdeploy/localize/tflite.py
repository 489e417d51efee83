"""Fault localisation for TFLite artifacts: the same model converted again, with module outputs exposed.

A TFLite flatbuffer keeps no per-module names fine enough to find a module's output (litert-torch
names tensors after the outermost modules only), and XNNPACK does not materialise the tensors it
computes.  So the instrumented copy is made the way the artifact was: the eager model, wrapped so that
its signature also returns each module's output (forward hooks, traced by the converter), is converted
by litert-torch with lightdeploy's decompositions, given the artifact's fp16 rewrite when it has one,
and run by the LiteRT interpreter as the artifact is.  Its final outputs are then compared with the
artifact's own, as for the other backends: a fault in the artifact's file (a corrupted weight) is not
in a re-conversion, and shows as an unreliable localisation instead of a wrong answer.  int8 artifacts
are refused: their calibration would have to be repeated on the instrumented graph.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from lightdeploy.errors import UsageError

PROBE = "probe_{}"  # the signature name of the i-th exposed module output
PRECISIONS = ("fp32", "fp16")


def check_tflite_localizable(manifest: dict) -> None:
    if manifest["precision"] not in PRECISIONS:
        raise UsageError(
            f"Localisation of TFLite {manifest['precision']} artifacts is not available: the instrumented copy "
            "would need the calibration repeated. Localise the same model's TFLite fp32 artifact (a converter "
            "fault shows there), or its OpenVINO int8 artifact (quantisation faults)."
        )


def probed_module(
    model: torch.nn.Module, paths: list[str], output_names: list[str], nhwc: bool, channel_last: list[int]
):
    """The converted module: one keyword input ``image``, a dict of the final outputs (manifest names)
    and ``probe_i`` = the output of module ``paths[i]`` (NCHW, as eager's hook sees it).

    ``nhwc``: the input is channel-last; ``channel_last``: the outputs the artifact's file holds NHWC
    (the exporter's choice, read from the manifest), so the probed graph ends as the artifact's does.
    """
    from lightdeploy.exporters.tflite.convert import named_io_module

    inner = copy.deepcopy(model).eval()  # hooks go on a copy: the user's model is never changed
    captured: dict[str, torch.Tensor] = {}
    modules = dict(inner.named_modules())
    for path in paths:
        modules[path].register_forward_hook(lambda m, a, out, path=path: captured.__setitem__(path, out))
    base = named_io_module(inner, tuple(output_names), channel_last, nhwc)

    class Probed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, image):
            captured.clear()
            result = dict(self.base(image=image))
            for i, path in enumerate(paths):
                result[PROBE.format(i)] = captured[path]
            return result

    return Probed().eval()


def run_tflite(folder: Path, manifest: dict, model, paths: list[str], x: np.ndarray, threads):
    """Convert the probed copy, run it on ``x``: ({path: value}, {final name: value})."""
    from lightdeploy.errors import require
    from lightdeploy.exporters.tflite.convert import _decompositions
    from lightdeploy.logs import quiet
    from lightdeploy.runtimes.tflite import interpreter_class

    litert_torch = require("litert_torch", package="litert-torch", extra="tflite", purpose="TFLite localisation")
    finals = [o["name"] for o in manifest["outputs"]]
    nhwc = manifest["preprocessing"].get("layout", "NCHW") == "NHWC"
    stored = [o.get("file_layout", o.get("layout")) for o in manifest["outputs"]]
    module = probed_module(model, paths, finals, nhwc, [i for i, lay in enumerate(stored) if lay == "NHWC"])
    with _decompositions(), quiet(stderr=True):
        # the keyword is the manifest's input name, as the exporter passes it (named_io_module's ``image``)
        feed = {manifest["inputs"][0]["name"]: torch.from_numpy(x)}
        content = bytes(litert_torch.convert(module, (), feed).model_content())
    if manifest["precision"] == "fp16":
        from lightdeploy.exporters.tflite.quantize import quantize_fp16

        content, _ = quantize_fp16(content)
    interpreter_cls, _ = interpreter_class()
    with tempfile.TemporaryDirectory(prefix="lightdeploy-localize-") as tmp:
        path = Path(tmp) / "probed.tflite"
        path.write_bytes(content)
        interp = interpreter_cls(model_path=str(path), num_threads=threads)
        runner = interp.get_signature_runner(next(iter(interp.get_signature_list())))
        result = runner(**{manifest["inputs"][0]["name"]: x})
    values = {p: np.asarray(result[PROBE.format(i)]) for i, p in enumerate(paths)}
    # finals as the runtime returns them: a file_layout NHWC output goes back to NCHW
    file_nhwc = {o["name"] for o in manifest["outputs"] if o.get("file_layout") == "NHWC"}
    return values, {
        n: np.asarray(result[n]).transpose(0, 3, 1, 2) if n in file_nhwc else np.asarray(result[n]) for n in finals
    }
