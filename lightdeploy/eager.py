"""Eager PyTorch behind the runtimes' interface, so eager and an artifact run through the same task
wrappers (preprocessing, top-k, boxes in image pixels, masks) when their accuracy is compared.
"""

from __future__ import annotations

import numpy as np
import torch

from lightdeploy.runtimes.base import RuntimeBase, TensorSpec


class EagerRuntime(RuntimeBase):
    """``run({input: array})`` on an eval-mode nn.Module; outputs named like the artifact's."""

    backend = "eager"

    def __init__(self, model: torch.nn.Module, manifest: dict):
        self._model = model
        super().__init__(
            [TensorSpec.from_manifest(e) for e in manifest["inputs"]],
            [TensorSpec.from_manifest(e) for e in manifest["outputs"]],
        )
        self._nhwc = manifest["preprocessing"].get("layout", "NCHW") == "NHWC"

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(feeds[self.inputs[0].name])
        if self._nhwc:
            x = x.permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            result = self._model(x)
        result = result if isinstance(result, (tuple, list)) else (result,)
        out = {}
        for spec, value in zip(self.outputs, result):
            value = value.detach().cpu().numpy()
            if self._nhwc and value.ndim == 4 and spec.shape and spec.shape[-1] == value.shape[1]:
                value = value.transpose(0, 2, 3, 1)
            out[spec.name] = value
        return out


def eager_manifest(name: str, input_size: tuple[int, int] | None = None) -> dict:
    """The manifest fields the task wrappers read, for a registry model run eagerly (no artifact)."""
    from lightdeploy.exporters.base import ExportJob, ExportOptions
    from lightdeploy.jobs import class_names, output_names
    from lightdeploy.models.registry import get_spec

    spec = get_spec(name)
    size = spec.check_input_size(input_size or spec.input_size)
    options = ExportOptions(target="eager", input_size=size)
    job = ExportJob(model=None, spec=spec, options=options, output_names=output_names(spec, options))
    return {
        "model": spec.name,
        "task": spec.task,
        "backend": "eager",
        "precision": "fp32",
        "num_classes": spec.num_classes,
        "class_names": class_names(spec, spec.num_classes),
        "preprocessing": job.preprocessing(),
        "inputs": [{"name": job.input_name, "shape": [1, 3, *size], "dtype": "float32"}],
        "outputs": [{"name": n, "shape": [], "dtype": "any"} for n in job.output_names],  # as the model returns
    }
