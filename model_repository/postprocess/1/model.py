"""postprocess: Matryoshka, L2 normalize, quantize; refuses NaN, Inf and zero states."""
import sys
from pathlib import Path

# the project's code this repository was built with lies beside this file (jina_triton_build's
# self_contained.py); first on sys.path, it wins over any other installed version
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_python_backend_utils as pb_utils

from jina_triton_client.contract import TOKEN_COUNT
from jina_triton_pipeline.internals import ENCODE_US, POOLED_STATE, TOKENIZE_US
from jina_triton_pipeline.quantization import Calibration
from jina_triton_pipeline.steps import Postprocessor
from jina_triton_pipeline.limits import ModelLimits
from jina_triton_pipeline.model_metrics import ModelMetrics
from jina_triton_pipeline.triton_requests import error_response, model_parameters, read_input, request_parameters


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.metrics = ModelMetrics(pb_utils, args["model_name"], args.get("model_instance_name", ""))
        folder = Path(args["model_repository"]) / args["model_version"]
        self.step = Postprocessor(Calibration.load(folder / "calibration.npz"), int(params["hidden_size"]),
                                  ModelLimits.load(params).max_length)

    def execute(self, requests):
        return self.metrics.answered([self._respond(request) for request in requests])

    def _respond(self, request):
        try:
            names = (POOLED_STATE, TOKEN_COUNT, TOKENIZE_US, ENCODE_US)
            inputs = (read_input(pb_utils, request, name) for name in names)
            outputs = self.step(*inputs, request_parameters(request))
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])
        except Exception as exc:  # noqa: BLE001
            return error_response(pb_utils, exc, request)
