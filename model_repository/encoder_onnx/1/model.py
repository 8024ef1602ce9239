"""encoder_<task>, `cpu` target: onnxruntime on the task's merged graph (pooled in the graph)."""
from pathlib import Path

import triton_python_backend_utils as pb_utils

from jina_triton_pipeline.encoder_step import EncoderStep, NumpyTensors
from jina_triton_pipeline.limits import ModelLimits
from jina_triton_pipeline.onnx_engine import OnnxEngine
from jina_triton_pipeline.triton_requests import model_parameters


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        engine = OnnxEngine(Path(args["model_repository"]) / args["model_version"] / "model.onnx",
                            int(params["threads"]), int(params["vocab_size"]))
        self.step = EncoderStep(pb_utils, engine, NumpyTensors(pb_utils), int(params["token_budget"]),
                                ModelLimits.load(params).max_length, args["model_name"],
                                args.get("model_instance_name", ""), float(params["max_padding"]))

    def execute(self, requests):
        return self.step.execute(requests)
