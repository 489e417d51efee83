"""The model registry: one ``ModelSpec`` per name, filled by the family files as they are imported.

A family file registers its variants with ``register_model``; an unknown name is a user error that
suggests the closest names, as torchvision's and timm's registries do.  Names are unique: registering
a name again with the same builder replaces the spec (a notebook cell run twice), with another
builder it is a programming error.

Other packages add families through the entry-point group ``lightdeploy.models`` (``PLUGIN_GROUP``):
an entry point names a module that registers its models when imported (``mypkg.models``), or a
function that registers them when called (``mypkg.models:register``).  They are loaded with the
built-in families, on the registry's first use, so their models appear in ``lightdeploy list``, the
CLI and every test parametrised over the registry.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field

from lightdeploy.errors import MissingDependencyError, UsageError, unknown_name_error

# ImageNet statistics in RGB order: every model here is trained on RGB in [0, 1], normalised so.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Reference:
    """A published or computed complexity figure that a test checks the built model against.

    ``macs`` and ``params`` are the **[C]** values of docs/models.md (computed from the architecture
    tables); ``source`` names the table or row they come from; ``at`` is the input size (H, W) the
    MACs are counted at; ``rel_tol`` the accepted relative difference (3%, docs/models.md: "within 3%").
    """

    macs: float | None
    params: float | None
    source: str
    at: tuple[int, int] = (224, 224)
    rel_tol: float = 0.03


@dataclass(frozen=True)
class ModelSpec:
    """Everything the product needs to know about one registered model name."""

    name: str
    family: str
    task: str  # "classify" | "detect" | "segment"
    builder: Callable[..., object]
    input_size: tuple[int, int]
    stride: int  # H and W must be multiples of it
    num_classes: int
    outputs: tuple[str, ...]
    description: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    reference: Reference | None = None
    # Names of the default classes (None: unnamed, e.g. ImageNet, whose names are not shipped here).
    class_names: tuple[str, ...] | None = None
    # Name of the torchvision architecture whose checkpoints load into this model, if any.
    torchvision_arch: str | None = None
    alias_of: str | None = None
    builder_kwargs: dict = field(default_factory=dict)
    # Optional: (model, export options.extra) -> the module that is exported and compared, e.g. a
    # detector that also returns its raw head tensors.  None: the model itself.
    export_wrapper: Callable[..., object] | None = None
    # Extra outputs the export wrapper adds with --raw-heads (detectors: the head tensors before NMS).
    raw_outputs: tuple[str, ...] = ()
    # Named weights (``lightdeploy.models.pretrained``) this name is built with; None: random init.
    pretrained: object | None = None

    def check_input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Validate a user-given (H, W): positive multiples of the model's stride."""
        h, w = (int(v) for v in size)
        if h <= 0 or w <= 0 or h % self.stride or w % self.stride:
            near = tuple(max(self.stride, round(v / self.stride) * self.stride) for v in (h, w))
            raise UsageError(
                f"Input size {h}x{w} does not suit {self.name!r}: height and width must be positive "
                f"multiples of its stride {self.stride} (its feature maps halve "
                f"{self.stride.bit_length() - 1} times). Use for example --input-size {near[0]} {near[1]}."
            )
        return h, w


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec``.  The same name with the same builder replaces the earlier spec (harmless: a notebook
    cell or a module run twice); with a different builder it raises, since two families claim one name."""
    existing = _REGISTRY.get(spec.name)
    if existing is not None and builder_id(existing.builder) != builder_id(spec.builder):
        raise ValueError(
            f"model name {spec.name!r} is registered twice: by {builder_id(existing.builder)} and by "
            f"{builder_id(spec.builder)}; give one of them another name"
        )
    _REGISTRY[spec.name] = spec
    return spec


def builder_id(builder) -> str:
    """'module:qualified name' of a builder: a function defined again by re-running its code keeps it."""
    module = getattr(builder, "__module__", None)
    name = getattr(builder, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(builder)


def register_alias(alias: str, target: str, description: str = "") -> ModelSpec:
    """Register ``alias`` as another name for ``target`` (e.g. thundernet = thundernet_snet146)."""
    base = _REGISTRY[target]
    spec = ModelSpec(
        **{**base.__dict__, "name": alias, "alias_of": target, "description": description or f"= {target}"}
    )
    return register_model(spec)


def register_pretrained(weights) -> ModelSpec:
    """Register ``MODEL:TAG`` for named weights: the architecture's spec with the checkpoint's classes."""
    base = _REGISTRY[weights.model]
    fields = {
        **base.__dict__,
        "name": weights.name,
        "alias_of": base.name,
        "pretrained": weights,
        "num_classes": weights.num_classes,
        "class_names": weights.class_names,
        "description": f"{base.description}; weights: {weights.description}",
    }
    if weights.input_size:
        fields["input_size"] = tuple(weights.input_size)
    return register_model(ModelSpec(**fields))


def get_spec(name: str) -> ModelSpec:
    _ensure_families_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name_error("model", name, list(_REGISTRY)) from None


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model (``MODEL:TAG`` named weights included)."""
    _ensure_families_loaded()
    return name in _REGISTRY


def list_models(task: str | None = None) -> list[str]:
    """Registered names (aliases included), family by family in BUILTIN_FAMILIES order, then models
    registered elsewhere, each in registration order; optionally of one task."""
    _ensure_families_loaded()
    order = {f"{__package__}.{family}": i for i, family in enumerate(BUILTIN_FAMILIES)}
    names = sorted(_REGISTRY, key=lambda n: order.get(_REGISTRY[n].builder.__module__, len(order)))
    return [n for n in names if task is None or _REGISTRY[n].task == task]


# The zoo's family modules (one file each under lightdeploy/models/), in listing order: backbones,
# detectors, segmenters.  Each registers its models when imported; the registry imports them by name
# on first use, so importing the registry (or one family) loads nothing else.
BUILTIN_FAMILIES = ("mobilenetv2", "shufflenetv2", "snet", "thundernet", "lighthead_rcnn", "bisenet", "dfanet")
PLUGIN_GROUP = "lightdeploy.models"
_families_loaded = False


def _ensure_families_loaded() -> None:
    global _families_loaded
    if _families_loaded:
        return
    # Set first: a plugin that calls get_spec while it registers must not start loading again.
    _families_loaded = True
    try:
        for family in BUILTIN_FAMILIES:
            importlib.import_module(f"{__package__}.{family}")
        importlib.import_module(f"{__package__}.pretrained").register_all()
        for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            _load_plugin(entry_point)
    except BaseException:
        _families_loaded = False  # the next call tries again (and reports the same error)
        raise


def _load_plugin(entry_point) -> None:
    """Import a ``lightdeploy.models`` entry point; a function it names is called to register."""
    package = entry_point.dist.name if entry_point.dist is not None else "?"
    try:
        target = entry_point.load()
        if callable(target):
            target()
    except Exception as exc:  # noqa: BLE001 - any failure of third-party code is reported as one
        raise MissingDependencyError(
            f"The lightdeploy plugin {entry_point.name!r} (entry point {entry_point.value!r} of the package "
            f"{package!r}) failed to load: {type(exc).__name__}: {exc}. Fix that package or uninstall it "
            f"(pip uninstall {package})."
        ) from exc
