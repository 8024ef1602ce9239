"""A stand-in for `triton_python_backend_utils`, enough to run the model.py files without a server."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np


class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array

    def to_dlpack(self):
        return self._array

    @classmethod
    def from_dlpack(cls, name, tensor):
        return cls(name, tensor.numpy())


class TritonError:
    INTERNAL, INVALID_ARG, UNAVAILABLE = "INTERNAL", "INVALID_ARG", "UNAVAILABLE"

    def __init__(self, message, code=INTERNAL):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class Request:
    def __init__(self, inputs: dict, parameters: dict | None = None, request_id: str = "", cancelled: bool = False):
        self.inputs = {name: Tensor(name, value) for name, value in inputs.items()}
        self._parameters = json.dumps(parameters or {})
        self._id, self._cancelled = request_id, cancelled

    def parameters(self):
        return self._parameters

    def request_id(self):
        return self._id

    def is_cancelled(self):
        return self._cancelled


FINAL = 1  # TRITONSERVER_RESPONSE_COMPLETE_FINAL


class SentRequest(Request):
    """A request answered through its response sender (Triton 24.04+), which records what was sent
    and, through `log`, in which order among every request sharing that list."""

    def __init__(self, inputs: dict, log: list, **settings):
        super().__init__(inputs, **settings)
        self.sent, self.log = [], log

    def get_response_sender(self):
        return self

    def send(self, response=None, flags=0):
        self.sent.append((response, flags))
        self.log.append(self)


class Logger:
    lines: list[str] = []

    @classmethod
    def log_error(cls, message):
        cls.lines.append(message)

    log_info = log_warn = log_verbose = log_error


def fake_module() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.TritonError, module.InferenceResponse, module.Logger = (
        Tensor, TritonError, InferenceResponse, Logger)
    module.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    module.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    return module


def load_model(model_dir: Path):
    """Import <model_dir>/1/model.py with the fake module and initialize it like Triton would."""
    sys.modules["triton_python_backend_utils"] = fake_module()
    spec = importlib.util.spec_from_file_location(f"model_{model_dir.name}", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
                      "model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name,
                      "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    return model


def texts(*values) -> np.ndarray:
    return np.array([[v if isinstance(v, bytes) else v.encode()] for v in values], dtype=np.object_)
