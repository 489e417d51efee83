"""A simulated TensorRT 10 (``tensorrt`` + cuda-python's runtime API) for tests on machines without a GPU.

It has the call surface lightdeploy uses: its "engine" runs the parsed ONNX in ONNX Runtime on host
memory, so the builder settings, layer pinning, profiles, timing cache, manifest update, name binding
and the parity gate through ``runtimes.load`` are all exercised.  ``install(monkeypatch)`` puts it in
``sys.modules``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx


# ------------------------------------------------------------------- the simulated TensorRT 10 API
class FakeTensorRT:
    """``tensorrt`` + ``cuda.bindings.runtime`` with the calls lightdeploy makes; "device" memory is host
    memory and the "engine" runs the parsed ONNX in ONNX Runtime.  ``built`` records every build."""

    def __init__(self):
        import ctypes
        import types

        import onnxruntime as ort

        self.built: list[dict] = []
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = "10.99.0+simulated"

        class DataType:
            def __init__(self, name, np_type):
                self.name, self.np = name, np_type

        trt.float32, trt.float16 = DataType("float32", np.float32), DataType("float16", np.float16)
        trt.int64, trt.int32 = DataType("int64", np.int64), DataType("int32", np.int32)
        elem = {1: trt.float32, 10: trt.float16, 7: trt.int64, 6: trt.int32}
        trt.nptype = lambda dt: dt.np
        trt.Logger = type("Logger", (), {"WARNING": 2, "INFO": 3, "__init__": lambda self, level=2: None})
        trt.init_libnvinfer_plugins = lambda logger, namespace: True
        trt.BuilderFlag = SimpleNamespace(
            FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS"
        )
        trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        trt.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

        class Layer:
            def __init__(self, name, n_out):
                self.name, self.metadata, self.precision = name, f"[ONNX Layer: {name}]", None
                self.num_outputs, self._types = n_out, {}

            def get_output(self, j):
                return SimpleNamespace(dtype=trt.float32)

            def set_output_type(self, j, dtype):
                self._types[j] = dtype

        class Network:
            def __init__(self):
                self.layers, self.onnx = [], b""

            num_layers = property(lambda self: len(self.layers))

            def get_layer(self, i):
                return self.layers[i]

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                self.network.onnx = Path(path).read_bytes()
                model = onnx.load_from_string(self.network.onnx)
                self.network.layers = [Layer(n.name, len(n.output)) for n in model.graph.node]
                return True

        class Cache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return self.data or b"simulated timing cache"

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.cache, self.builder_optimization_level = set(), [], None, 3

            def set_flag(self, flag):
                self.flags.add(flag)

            def set_memory_pool_limit(self, pool, size):
                self.workspace = size

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = [list(lo), list(opt), list(hi)]

        class Builder:
            def __init__(self, logger):
                pass

            create_network = staticmethod(lambda flags=0: Network())
            create_builder_config = staticmethod(Config)
            create_optimization_profile = staticmethod(Profile)

            def build_serialized_network(self, network, config):
                fake.built.append(
                    {
                        "flags": set(config.flags),
                        "timing_cache_set": config.cache is not None,
                        "fp32_layers": [ly.name for ly in network.layers if ly.precision is trt.float32],
                        "profiles": config.profiles[0].shapes if config.profiles else {},
                    }
                )
                return trt.__version__.encode() + b"\n" + network.onnx

        class Context:
            def __init__(self, engine):
                self.engine, self.shapes, self.addresses = engine, {}, {}

            def set_input_shape(self, name, shape):
                self.shapes[name] = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                if name in self.shapes:
                    return self.shapes[name]
                zeros = {n: np.zeros(s, np.float32) for n, s in self.shapes.items()}
                outs = dict(zip(self.engine.outputs, self.engine.session.run(self.engine.outputs, zeros)))
                return outs[name].shape

            def set_tensor_address(self, name, ptr):
                self.addresses[name] = ptr
                return True

            def execute_async_v3(self, stream):
                feeds = {}
                for name, shape in self.shapes.items():
                    n = int(np.prod(shape)) * 4
                    raw = (ctypes.c_char * n).from_address(self.addresses[name])
                    feeds[name] = np.frombuffer(raw, np.float32).reshape(shape).copy()
                for name, out in zip(self.engine.outputs, self.engine.session.run(self.engine.outputs, feeds)):
                    out = np.ascontiguousarray(out)
                    ctypes.memmove(self.addresses[name], out.ctypes.data, out.nbytes)
                return True

        class Engine:
            def __init__(self, onnx_bytes):
                model = onnx.load_from_string(onnx_bytes)
                self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
                self.io = [(v, "INPUT") for v in model.graph.input] + [(v, "OUTPUT") for v in model.graph.output]
                self.outputs = [v.name for v in model.graph.output]
                self.num_io_tensors = len(self.io)
                self._by_name = {v.name: (v, mode) for v, mode in self.io}

            def get_tensor_name(self, i):
                return self.io[i][0].name

            def get_tensor_shape(self, name):
                dims = self._by_name[name][0].type.tensor_type.shape.dim
                return [d.dim_value if d.dim_value else -1 for d in dims]

            def get_tensor_dtype(self, name):
                return elem[self._by_name[name][0].type.tensor_type.elem_type]

            def get_tensor_mode(self, name):
                return self._by_name[name][1]

            def create_execution_context(self):
                return Context(self)

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                version, _, onnx_bytes = bytes(data).partition(b"\n")
                return Engine(onnx_bytes) if version.decode() == trt.__version__ else None

        trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
        self.trt = trt

        cudart = types.ModuleType("cuda.bindings.runtime")
        memory: dict[int, object] = {}

        def malloc(n):
            buf = ctypes.create_string_buffer(int(n))
            memory[ctypes.addressof(buf)] = buf
            return 0, ctypes.addressof(buf)

        cudart.cudaMalloc = malloc
        cudart.cudaFree = lambda ptr: (memory.pop(ptr, None), 0)[1:]
        cudart.cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
        cudart.cudaMemcpyAsync = lambda dst, src, n, kind, stream: (ctypes.memmove(dst, src, n), 0)[1:]
        cudart.cudaStreamCreate = lambda: (0, 7)
        cudart.cudaStreamSynchronize = lambda stream: (0,)
        cudart.cudaStreamDestroy = lambda stream: (0,)
        cudart.cudaSetDevice = lambda device: (0,)
        cudart.cudaGetDeviceCount = lambda: (0, 1)
        cudart.cudaGetDeviceProperties = lambda device: (
            0,
            SimpleNamespace(name=b"Simulated GPU", major=8, minor=9, totalGlobalMem=8 << 30),
        )
        self.cudart = cudart


def install(monkeypatch) -> FakeTensorRT:
    import sys
    import types

    fake = FakeTensorRT()
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime, cuda.bindings = fake.cudart, bindings
    for name, module in (
        ("tensorrt", fake.trt),
        ("cuda", cuda),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", fake.cudart),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return fake
