"""The TFLite target: model.tflite converted from the traced eager model by litert-torch; FP32, FP16, INT8."""

from lightdeploy.exporters.tflite.convert import TFLiteExporter

EXPORTER = TFLiteExporter()
