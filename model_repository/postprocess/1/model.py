"""postprocess: last-token pooling, Matryoshka, L2 normalize, quantize.

Inside an ensemble a step cannot tell which outputs the client asked for
(platform-notes §8), so every output is computed; all are cheap.
"""
from pathlib import Path

import triton_python_backend_utils as pb_utils

from jina_triton_client import contract
from jina_triton_client.validation import parse_options
from jina_triton_pipeline.pooling import last_token, matryoshka
from jina_triton_pipeline.quantization import Calibration, to_binary, to_int8, to_ubinary, to_uint8
from jina_triton_pipeline.triton_adapter import error_response, model_parameters, request_parameters


class TritonPythonModel:
    def initialize(self, args):
        self.width = int(model_parameters(args)["hidden_size"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.calibration = Calibration.load(folder / "calibration.npz")

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            options = parse_options(request_parameters(request), self.width)
            counts = pb_utils.get_input_tensor_by_name(request, contract.TOKEN_COUNT).as_numpy()
            hidden = pb_utils.get_input_tensor_by_name(request, contract.LAST_HIDDEN_STATE)
            if hidden is not None:
                pooled = last_token(hidden.as_numpy(), counts)
            else:  # a GPU engine pooled in its graph
                pooled = pb_utils.get_input_tensor_by_name(request, contract.POOLED_STATE).as_numpy()
            vectors = matryoshka(pooled, options.dimensions)
            return pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(contract.OUTPUT_FLOAT, vectors),
                pb_utils.Tensor(contract.OUTPUT_INT8, to_int8(vectors, self.calibration)),
                pb_utils.Tensor(contract.OUTPUT_UINT8, to_uint8(vectors, self.calibration)),
                pb_utils.Tensor(contract.OUTPUT_BINARY, to_binary(vectors)),
                pb_utils.Tensor(contract.OUTPUT_UBINARY, to_ubinary(vectors)),
                pb_utils.Tensor(contract.TOKEN_COUNT, counts)])
        except Exception as exc:  # noqa: BLE001
            return error_response(pb_utils, exc)
