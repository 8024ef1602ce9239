"""encoder_<task> on CPU: onnxruntime on the task's merged ONNX engine.

Requests arrive ragged (each its own sequence length); their texts are packed
into length-sorted sub-batches under a token budget and unpacked again.
"""
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from jina_triton_client import contract
from jina_triton_pipeline.batching import run_packed
from jina_triton_pipeline.triton_adapter import error_response, model_parameters, token_counters


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        params = model_parameters(args)
        self.token_budget = int(params["token_budget"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params["intra_op_threads"])
        options.inter_op_num_threads = 1
        engine = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(engine), options, providers=["CPUExecutionProvider"])
        self.tokens = token_counters(pb_utils, args["model_name"])

    def _forward(self, input_ids, attention_mask):
        self.tokens.record(input_ids.size, int(attention_mask.sum()))
        return self.session.run([contract.LAST_HIDDEN_STATE], {
            contract.INPUT_IDS: input_ids, contract.ATTENTION_MASK: attention_mask})[0]

    def execute(self, requests):
        try:
            inputs = [self._inputs(request) for request in requests]
            hidden = run_packed(inputs, self.token_budget, self._forward)
            return [self._response(h) for h in hidden]
        except Exception:  # noqa: BLE001 - retry one by one so that only the culprit fails
            return [self._respond_alone(request) for request in requests]

    def _inputs(self, request):
        return (pb_utils.get_input_tensor_by_name(request, contract.INPUT_IDS).as_numpy(),
                pb_utils.get_input_tensor_by_name(request, contract.ATTENTION_MASK).as_numpy())

    def _respond_alone(self, request):
        try:
            return self._response(run_packed([self._inputs(request)], self.token_budget, self._forward)[0])
        except Exception as exc:  # noqa: BLE001
            return error_response(pb_utils, exc)

    @staticmethod
    def _response(hidden):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(contract.LAST_HIDDEN_STATE, np.ascontiguousarray(hidden))])
