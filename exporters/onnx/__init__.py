"""The ONNX target: model.onnx run by ONNX Runtime (the reference runtime).  Its export is also the
first step of every other target (``export.write_onnx``)."""

from lightdeploy.exporters.onnx.export import OnnxExporter

EXPORTER = OnnxExporter()
