"""preprocess: prefix + tokenize + truncate each request's texts."""
import os
from pathlib import Path

import triton_python_backend_utils as pb_utils

from jina_triton_client import contract
from jina_triton_client.validation import parse_options
from jina_triton_pipeline.tokenization import TextTokenizer
from jina_triton_pipeline.triton_adapter import (
    decode_texts, error_response, model_parameters, request_parameters)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.width = int(params["hidden_size"])
        folder = Path(args["model_repository"]) / args["model_version"]
        max_length = int(params["max_length"])
        if os.environ.get("JINA_TRITON_MAX_LENGTH"):  # `serve --max-length` may only lower it
            max_length = min(max_length, int(os.environ["JINA_TRITON_MAX_LENGTH"]))
        self.tokenizer = TextTokenizer(folder / "tokenizer.json", max_length)

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            options = parse_options(request_parameters(request), self.width)
            tensor = pb_utils.get_input_tensor_by_name(request, contract.TEXT)
            texts = decode_texts(None if tensor is None else tensor.as_numpy(), contract.TEXT)
            batch = self.tokenizer(texts, options.input_type, options.truncate)
            return pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(contract.INPUT_IDS, batch.input_ids),
                pb_utils.Tensor(contract.ATTENTION_MASK, batch.attention_mask),
                pb_utils.Tensor(contract.TOKEN_COUNT, batch.token_count)])
        except Exception as exc:  # noqa: BLE001 - every failure becomes a clean response
            return error_response(pb_utils, exc)
