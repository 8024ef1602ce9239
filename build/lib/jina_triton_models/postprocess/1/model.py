"""postprocess: Matryoshka, L2 normalize, quantize; refuses NaN, Inf and zero states."""
from pathlib import Path

import triton_python_backend_utils as pb_utils

from jina_triton_client.contract import TOKEN_COUNT
from jina_triton_pipeline.internals import ENCODE_US, POOLED_STATE, TOKENIZE_US
from jina_triton_pipeline.quantization import Calibration
from jina_triton_pipeline.steps import Postprocessor
from jina_triton_pipeline.triton_adapter import (
    ModelMetrics, error_response, limit, model_parameters, request_parameters)


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.metrics = ModelMetrics(pb_utils, args["model_name"], args.get("model_instance_name", ""))
        folder = Path(args["model_repository"]) / args["model_version"]
        self.step = Postprocessor(Calibration.load(folder / "calibration.npz"), int(params["hidden_size"]),
                                  limit(params, "max_length"))

    def execute(self, requests):
        return self.metrics.answered([self._respond(request) for request in requests])

    def _respond(self, request):
        try:
            inputs = (_input(request, name) for name in (POOLED_STATE, TOKEN_COUNT, TOKENIZE_US, ENCODE_US))
            outputs = self.step(*inputs, request_parameters(request))
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])
        except Exception as exc:  # noqa: BLE001
            return error_response(pb_utils, exc, request)
