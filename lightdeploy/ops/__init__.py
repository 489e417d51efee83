"""Custom ops: one file per op, each with its eager form, fake form, ONNX translation and schema.

Each op module may define:
- ``ONNX_TRANSLATIONS``: {op overload: onnxscript-traceable function} used by the ONNX exporter;
- ``DECOMPOSITIONS``: {op overload: plain torch function} used by converters without custom ops.
The tables below are collected from every module here, so a new op plugs in without touching the
exporters.
"""

from __future__ import annotations

import importlib
import pkgutil


def _op_modules():
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


def onnx_translation_table() -> dict:
    """{op overload: ONNX translation} for ``torch.onnx.export(custom_translation_table=...)``."""
    table: dict = {}
    for module in _op_modules():
        table.update(getattr(module, "ONNX_TRANSLATIONS", {}))
    return table


def decomposition_table() -> dict:
    """{op overload: plain-tensor function} for converters that take only builtin ops."""
    table: dict = {}
    for module in _op_modules():
        table.update(getattr(module, "DECOMPOSITIONS", {}))
    return table
