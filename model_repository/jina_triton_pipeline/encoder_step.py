"""What every encoder model does with one `execute`: check each request, pack the rows of
all of them under the token budget, run the engine, answer each request on its own.

The engine is onnxruntime (`cpu` target, onnx_engine.py) or PyTorch (`cuda` target,
torch_engine.py); the tensors travel as numpy arrays or, for PyTorch, through DLPack.
"""
from __future__ import annotations

import time

import numpy as np

from .heap import RELEASE_AFTER_TOKENS, IdleRelease, release_free_memory
from .internals import ATTENTION_MASK, ENCODE_US, INPUT_IDS, POOLED_STATE
from .limits import Unavailable, check_token_batch
from .model_metrics import ModelMetrics
from .packing import MAX_PADDING, run_packed
from .triton_requests import cancelled, error_response, read_input

CANCEL_CHECK_S = 0.1  # a caller who gives up mid-execute stops costing compute this long after


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
        self.heap = IdleRelease()

    def execute(self, requests) -> list | None:
        with self.heap.running():
            return self._execute(requests)

    def _execute(self, requests) -> list | None:
        replies = Replies(self.pb, requests, early=getattr(self.engine.passes, "on_host", False))
        inputs = {}
        for index, request in enumerate(requests):
            try:
                ids, mask = (self.tensors.get(request, name) for name in (INPUT_IDS, ATTENTION_MASK))
                check_token_batch(ids, mask, self.engine.vocab_size, self.max_length)
                inputs[index] = (ids, mask)
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                replies.answer(index, error_response(self.pb, exc, request))
        order = list(inputs)
        try:
            self._answer(requests, order, [inputs[i] for i in order], replies)
        except Exception:  # noqa: BLE001 - rerun one by one so that only the culprit fails
            for index in (i for i in order if replies.pending(i)):
                try:
                    self._answer(requests, [index], [inputs[index]], replies)
                except Exception as exc:  # noqa: BLE001
                    replies.answer(index, error_response(self.pb, exc, requests[index]))
        self.metrics.answered(replies.responses)
        return replies.returned()

    def _answer(self, requests, order: list[int], inputs: list, replies: "Replies") -> None:
        def done(k: int, pooled, encode_us: int) -> None:
            spent = np.full((len(pooled), 1), encode_us, np.int64)
            replies.answer(order[k], self.pb.InferenceResponse(output_tensors=[
                self.tensors.make(POOLED_STATE, pooled), self.tensors.make(ENCODE_US, spent)]))

        started = time.perf_counter()
        wanted = Wanted(requests)
        packed = run_packed(inputs, self.token_budget, self.engine.forward, passes=self.engine.passes,
                            keep=lambda k: wanted(order[k]), max_padding=self.max_padding, done=done)
        self.metrics.tokens(packed.computed_tokens, packed.real_tokens)
        if hasattr(self.engine, "take_passes"):
            self.metrics.passes(self.engine.take_passes())
        else:  # one session (torch): run_packed's wall time, staging, passes and their one sync
            self.metrics.passes({"wide": (packed.passes, time.perf_counter() - started)})
        if packed.computed_tokens >= RELEASE_AFTER_TOKENS:  # big passes' activations, else kept for good
            self.heap.grew()
        for k, index in enumerate(order):
            if not replies.pending(index):
                continue
            if packed.pooled[k] is None:
                replies.answer(index, error_response(self.pb, Unavailable("cancelled: the caller gave up")))
            else:
                done(k, packed.pooled[k], packed.encode_us[k])


class Wanted:
    """Whether a request of this execute is still wanted, asked before each pass that holds its rows.
    Triton answers `is_cancelled` through a round trip to the server process: asked per pass and per
    request, an execute of 16 requests in 11 passes made ~170 of them. So each request is asked once
    at the start (a request cancelled while queued costs no compute) and then at most every `every_s`."""

    def __init__(self, requests, every_s: float = CANCEL_CHECK_S):
        self.requests, self.every_s = requests, every_s
        self.seen: dict[int, tuple[bool, float]] = {}

    def __call__(self, index: int) -> bool:
        now = time.monotonic()
        known = self.seen.get(index)
        if known is None or (known[0] and now - known[1] >= self.every_s):
            known = self.seen[index] = (not cancelled(self.requests[index]), now)
        return known[0]


class Replies:
    """One response per request of an execute. Where the backend lets a model answer before its
    execute returns (a request's response sender, Python backend of Triton 24.04 and later) and
    the engine's output is on the host after each pass, each request is sent its answer as soon
    as it is ready: a short query batched with long documents does not wait for them, and its
    caller's next request can reach the other instance. Else the answers return together."""

    def __init__(self, pb_utils, requests, early: bool):
        self.responses: list = [None] * len(requests)
        self.final = getattr(pb_utils, "TRITONSERVER_RESPONSE_COMPLETE_FINAL", None)
        self.senders = None
        if early and self.final is not None:
            try:
                self.senders = [request.get_response_sender() for request in requests]
            except Exception:  # noqa: BLE001 - an older backend: answers return with the execute
                self.senders = None

    def pending(self, index: int) -> bool:
        return self.responses[index] is None

    def answer(self, index: int, response) -> None:
        if self.responses[index] is not None:
            return  # every request is answered once
        self.responses[index] = response
        if self.senders is not None:
            self.senders[index].send(response, flags=self.final)

    def returned(self) -> list | None:
        """What execute returns: None where every answer went through its sender."""
        return None if self.senders is not None else self.responses
