"""Factory references: ``pkg.module:factory`` and ``path/to/file.py:factory``, resolved and called.

A factory is a function that returns an ``nn.Module``.  Its reference is what the CLI takes
(``lightdeploy export mypkg.models:build``) and what an artifact's manifest records, so that
``lightdeploy parity DIR`` can build the same eager model again:

- ``pkg.module:name`` is imported like ``python -m`` would: the installed package, or (if that import
  finds no such module) a module in the current folder;
- ``path/to/file.py:name`` is loaded from that file (relative to the current folder), with the file's
  folder on ``sys.path`` so it can import its neighbours, as when it runs as a script.  The manifest
  records the path relative to the folder the export ran in, never an absolute path.

Every failure (file or module missing, import error, no such name, not callable, required
arguments, not a module returned) is a ``UsageError`` naming the reference and what failed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lightdeploy.errors import UsageError

FACTORY_SEED = 0  # a factory runs with torch's RNG seeded so, so its random init is the same every time
# Module names given to factory files loaded by path: {module name: the reference's file part}.
_FILE_MODULES: dict[str, str] = {}
_FILE_MODULE_PREFIX = "lightdeploy_factory_file_"
# Parameters lightdeploy fills in when a factory declares them (``--num-classes``, ``--input-size``).
SUPPLIED = ("num_classes", "input_size")


def is_reference(text: str) -> bool:
    """A factory reference has ``:``; so do named weights (``MODEL:TAG``), which callers look up in the
    registry first."""
    return ":" in text


def split_reference(ref: str) -> tuple[str, str]:
    """'a/b.py:build' -> ('a/b.py', 'build'); 'pkg.mod:Cls.make' -> ('pkg.mod', 'Cls.make')."""
    where, _, attr = ref.rpartition(":")
    if not where or not attr:
        raise UsageError(f"{ref!r} is not a factory reference: write pkg.module:function or path/to/file.py:function.")
    return where, attr


def is_file_reference(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def resolve(ref: str) -> Callable:
    """The function (or class) ``ref`` names."""
    where, attr = split_reference(ref)
    module = _load_file(where, ref) if is_file_reference(where) else _import_module(where, ref)
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise UsageError(
                f"Factory {ref!r}: {where!r} has no attribute {attr!r}. Callables it defines: "
                f"{', '.join(names) or 'none'}."
            )
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"Factory {ref!r} is a {type(target).__name__}, not a function that returns an nn.Module.")
    return target


def _import_module(name: str, ref: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        # The lightdeploy command's sys.path lacks the current folder (python -m would have it).
        if exc.name == name.split(".")[0] and cwd not in sys.path:
            sys.path.insert(0, cwd)
            return _import_module(name, ref)
        raise _import_error(ref, f"import {name}", exc) from exc
    except Exception as exc:  # noqa: BLE001 - the module's own code failed while importing
        raise _import_error(ref, f"import {name}", exc) from exc


def _load_file(where: str, ref: str):
    path = Path(where)
    if not path.is_file():
        raise UsageError(
            f"Factory {ref!r}: the file {where!r} does not exist (relative to {os.getcwd()!r}). Give the path of "
            "the .py file that defines the factory, from the folder you run lightdeploy in."
        )
    resolved = path.resolve()
    name = _FILE_MODULE_PREFIX + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    if name in sys.modules:  # loaded before in this process: the same classes, not copies of them
        return sys.modules[name]
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered first, as import does: dataclasses and pickling look it up
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if not isinstance(exc, Exception):
            raise
        raise _import_error(ref, f"load {where}", exc) from exc
    _FILE_MODULES[name] = os.path.relpath(resolved)
    return module


def _import_error(ref: str, what: str, exc: Exception) -> UsageError:
    return UsageError(
        f"Factory {ref!r}: could not {what}: {type(exc).__name__}: {exc}. Fix the import (install the "
        "package, or run from the folder that holds the module) and try again."
    )


def reference_of(obj) -> str | None:
    """The reference that finds ``obj`` (a function or class) again, or None when nothing can: a
    function defined inside another, or in ``__main__`` (a notebook or a script's own body)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or module == "__main__":
        return None
    return f"{_FILE_MODULES.get(module, module)}:{qualname}"


def class_path(module: nn.Module) -> str:
    """'pkg.mod:Class' (or 'file.py:Class') of a module's class, for the manifest."""
    cls = type(module)
    return reference_of(cls) or f"{cls.__module__}:{cls.__qualname__}"


# ------------------------------------------------------------------------------------------ calling
def factory_kwargs(factory: Callable, ref: str, *, num_classes: int | None, input_size) -> dict:
    """The keyword arguments lightdeploy passes: ``num_classes`` when given, ``input_size`` when the
    factory declares it.  A required parameter lightdeploy cannot fill is an error."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C types have no signature: call without arguments
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    required = [
        name
        for name, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and name not in SUPPLIED
    ]
    if required:
        raise UsageError(
            f"Factory {ref!r} needs argument(s) {', '.join(required)}, which lightdeploy cannot give (it passes "
            f"only {' and '.join(SUPPLIED)}). Give them defaults, or write a factory without them that calls it."
        )
    kwargs: dict = {}
    if num_classes is not None:
        if "num_classes" not in params and not takes_any:
            raise UsageError(
                f"--num-classes was given, but factory {ref!r} has no num_classes parameter. Add one, or drop the option."
            )
        kwargs["num_classes"] = int(num_classes)
    elif "num_classes" in params and params["num_classes"].default is inspect.Parameter.empty:
        raise UsageError(f"Factory {ref!r} needs num_classes: give --num-classes N.")
    if "input_size" in params and input_size is not None:
        kwargs["input_size"] = tuple(int(v) for v in input_size)
    elif "input_size" in params and params["input_size"].default is inspect.Parameter.empty:
        raise UsageError(f"Factory {ref!r} needs input_size: give --input-size H W.")
    return kwargs


def call(factory: Callable, ref: str, kwargs: dict, seed: int = FACTORY_SEED) -> nn.Module:
    """``factory(**kwargs)`` with torch's RNG seeded (the same random init every time) and restored
    afterwards (the caller's RNG is untouched); the result must be an ``nn.Module``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = factory(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's code failed: say where, keep the cause
            raise UsageError(f"Factory {ref!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise UsageError(
            f"Factory {ref!r} returned a {type(module).__module__}.{type(module).__qualname__}, not a "
            "torch.nn.Module. A factory builds the model and returns it (return model, not model.state_dict())."
        )
    return module
