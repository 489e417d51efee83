"""The TensorRT target: a build plan made and checked on any machine (ONNX rewritten for TensorRT, the
operator check, FP16 pins, the INT8 QDQ model, builder settings), and the engine built from it on the
GPU machine.  Where no GPU is, the gate runs the plan's CPU estimate (``estimate.py``)."""

from lightdeploy.exporters.tensorrt.export import TensorRTExporter

EXPORTER = TensorRTExporter()
