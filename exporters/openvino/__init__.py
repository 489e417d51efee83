"""The OpenVINO target: IR (model.xml + model.bin) for OpenVINO's CPU plugin; FP32, FP16, INT8 (NNCF)."""

from lightdeploy.exporters.openvino.convert import OpenVinoExporter

EXPORTER = OpenVinoExporter()
