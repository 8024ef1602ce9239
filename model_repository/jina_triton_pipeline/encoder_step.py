"""What every encoder model does with one `execute`: check each request, pack the rows of
all of them under the token budget, run the engine, answer each request on its own.

The engine is onnxruntime (`cpu` target, onnx_engine.py) or PyTorch (`cuda` target,
torch_engine.py); the tensors travel as numpy arrays or, for PyTorch, through DLPack.
"""
from __future__ import annotations

import numpy as np

from .heap import RELEASE_AFTER_TOKENS, release_free_memory
from .internals import ATTENTION_MASK, ENCODE_US, INPUT_IDS, POOLED_STATE
from .limits import Unavailable, check_token_batch
from .model_metrics import ModelMetrics
from .packing import MAX_PADDING, run_packed
from .triton_requests import cancelled, error_response, read_input


class NumpyTensors:
    def __init__(self, pb_utils):
        self.pb = pb_utils

    def get(self, request, name):
        return read_input(self.pb, request, name)

    def make(self, name, array):
        return self.pb.Tensor(name, np.ascontiguousarray(array))


class DlpackTensors:
    """Tensors in and out through DLPack, never as_numpy (wrong data under numpy 2 in old stubs)."""

    def __init__(self, pb_utils):
        import torch

        self.pb, self.torch = pb_utils, torch

    def get(self, request, name):
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else self.torch.from_dlpack(tensor.to_dlpack())

    def make(self, name, array):
        if isinstance(array, np.ndarray):
            array = self.torch.from_numpy(array)
        return self.pb.Tensor.from_dlpack(name, array.contiguous())


class EncoderStep:
    def __init__(self, pb_utils, engine, tensors, token_budget: int, max_length: int, model_name: str,
                 instance: str = "", max_padding: float = MAX_PADDING):
        self.pb, self.engine, self.tensors = pb_utils, engine, tensors
        self.token_budget, self.max_length, self.max_padding = token_budget, max_length, max_padding
        self.metrics = ModelMetrics(pb_utils, model_name, instance)
        release_free_memory()  # what loading and warming up the engine left behind (call warm_up first)

    def execute(self, requests) -> list:
        responses: list = [None] * len(requests)
        inputs = {}
        for index, request in enumerate(requests):
            try:
                ids, mask = (self.tensors.get(request, name) for name in (INPUT_IDS, ATTENTION_MASK))
                check_token_batch(ids, mask, self.engine.vocab_size, self.max_length)
                inputs[index] = (ids, mask)
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                responses[index] = error_response(self.pb, exc, request)
        order = list(inputs)
        try:
            self._answer(requests, order, [inputs[i] for i in order], responses)
        except Exception:  # noqa: BLE001 - rerun one by one so that only the culprit fails
            for index in order:
                try:
                    self._answer(requests, [index], [inputs[index]], responses)
                except Exception as exc:  # noqa: BLE001
                    responses[index] = error_response(self.pb, exc, requests[index])
        return self.metrics.answered(responses)

    def _answer(self, requests, order: list[int], inputs: list, responses: list) -> None:
        packed = run_packed(inputs, self.token_budget, self.engine.forward, passes=self.engine.passes,
                            keep=lambda k: not cancelled(requests[order[k]]), max_padding=self.max_padding)
        self.metrics.tokens(packed.computed_tokens, packed.real_tokens)
        if hasattr(self.engine, "take_pass_counts"):
            self.metrics.passes(self.engine.take_pass_counts())
        if packed.computed_tokens >= RELEASE_AFTER_TOKENS:  # big passes' activations, else kept for good
            release_free_memory()
        for k, index in enumerate(order):
            pooled = packed.pooled[k]
            if pooled is None:
                responses[index] = error_response(self.pb, Unavailable("cancelled: the caller gave up"))
                continue
            spent = np.full((len(pooled), 1), packed.encode_us[k], np.int64)
            responses[index] = self.pb.InferenceResponse(output_tensors=[
                self.tensors.make(POOLED_STATE, pooled), self.tensors.make(ENCODE_US, spent)])
