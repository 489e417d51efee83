"""What ``lightdeploy list`` and ``lightdeploy info`` show: complexity and details of models and artifacts."""

from __future__ import annotations

import functools
from pathlib import Path

from lightdeploy.complexity import count_macs, count_params
from lightdeploy.models.registry import get_spec


@functools.cache
def complexity(name: str, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(params, MACs) of ``name`` at ``input_size`` (default: its own), batch 1.

    Counted on the meta device: shapes only, no memory or arithmetic, so listing is instant.
    """
    import torch

    from lightdeploy.factory import build

    spec = get_spec(name)
    size = input_size or spec.input_size
    with torch.device("meta"):
        model = build(spec, spec.num_classes, size).eval()
        return count_params(model), count_macs(model, size)


def model_info(name: str):
    from rich.table import Table

    spec = get_spec(name)
    params, macs = complexity(name)
    table = Table(title=f"{name}: {spec.description}", show_header=False)
    rows = [
        ("task", spec.task),
        ("family", spec.family),
        ("alias of", spec.alias_of or "-"),
        ("input", f"1x3x{spec.input_size[0]}x{spec.input_size[1]} RGB, H and W multiples of {spec.stride}"),
        ("normalisation", f"mean {spec.mean}, std {spec.std} on [0, 1]"),
        ("outputs", ", ".join(spec.outputs)),
        ("classes", str(spec.num_classes)),
        ("params", f"{params:,}"),
        ("MACs", f"{macs:,} at {spec.input_size[0]}x{spec.input_size[1]}"),
    ]
    if spec.reference is not None:
        ref = spec.reference
        at_params, at_macs = complexity(name, tuple(ref.at))
        if ref.macs:
            rows.append(
                (
                    "reference MACs",
                    f"{ref.macs / 1e6:.1f}M at {ref.at[0]}x{ref.at[1]} ({ref.source}); "
                    f"built: {at_macs / 1e6:.1f}M ({at_macs / ref.macs - 1:+.2%})",
                )
            )
        if ref.params:
            rows.append(
                (
                    "reference params",
                    f"{ref.params / 1e6:.3f}M; built: {at_params / 1e6:.3f}M ({at_params / ref.params - 1:+.2%})",
                )
            )
    if spec.torchvision_arch:
        rows.append(("loads", f"torchvision {spec.torchvision_arch} checkpoints (--weights)"))
    for part, value in _parts(name):
        rows.append((part, value))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _parts(name: str) -> list[tuple[str, str]]:
    """Per-part MACs for models that define ``macs_by_part`` (the detectors)."""
    from lightdeploy.factory import create_model

    model = create_model(name, calibrate_bn=False)
    if not hasattr(model, "macs_by_part"):
        return []
    return [(f"MACs: {part}", f"{macs / 1e6:.1f}M") for part, macs in model.macs_by_part().items()]


def artifact_info(folder: Path):
    from rich.table import Table

    from lightdeploy.runtimes.manifest import read_manifest

    m = read_manifest(folder, verify=True)
    table = Table(title=f"artifact {folder.name} (all file hashes verified)", show_header=False)
    parity = m.get("parity")
    rows = [
        ("model", m["model"]),
        ("task", m["task"]),
        ("target / backend", f"{m['target']} / {m['backend']}"),
        ("precision", m["precision"]),
        ("file", m["backend_file"]),
        ("inputs", "; ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in m["inputs"])),
        ("outputs", "; ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in m["outputs"])),
        ("preprocessing", str(m["preprocessing"])),
        ("parity", "not run" if not parity else ("passed" if parity["passed"] else "FAILED")),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table
