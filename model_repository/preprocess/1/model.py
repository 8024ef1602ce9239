"""preprocess: prefix + tokenize + truncate each request's texts."""
from pathlib import Path

import triton_python_backend_utils as pb_utils

from jina_triton_client import contract
from jina_triton_client.validation import parse_options
from jina_triton_pipeline.tokenization import TextTokenizer, parse_buckets
from jina_triton_pipeline.triton_adapter import (
    decode_texts, error_response, limit, model_parameters, request_parameters)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.width = int(params["hidden_size"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.max_text_bytes = limit(params, "max_text_bytes")
        self.max_request_bytes = limit(params, "max_request_bytes")
        self.tokenizer = TextTokenizer(folder / "tokenizer.json", limit(params, "max_length"))
        self.buckets = parse_buckets(params.get("length_buckets", ""))

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            options = parse_options(request_parameters(request), self.width)
            tensor = pb_utils.get_input_tensor_by_name(request, contract.TEXT)
            texts = decode_texts(None if tensor is None else tensor.as_numpy(), contract.TEXT,
                                 self.max_text_bytes, self.max_request_bytes)
            batch = self.tokenizer(texts, options.input_type, options.truncate, self.buckets)
            return pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(contract.INPUT_IDS, batch.input_ids),
                pb_utils.Tensor(contract.ATTENTION_MASK, batch.attention_mask),
                pb_utils.Tensor(contract.TOKEN_COUNT, batch.token_count)])
        except Exception as exc:  # noqa: BLE001 - every failure becomes a clean response
            return error_response(pb_utils, exc)
