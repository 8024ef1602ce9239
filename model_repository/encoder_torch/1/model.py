"""encoder_<task>, `cuda` target: the merged encoder in PyTorch; refuses to load below its parity gate."""
import sys
from pathlib import Path

# the project's code this repository was built with lies beside this file (jina_triton_build's
# self_contained.py); first on sys.path, it wins over any other installed version
sys.path.insert(0, str(Path(__file__).resolve().parent))

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from jina_triton_pipeline.encoder_step import DlpackTensors, EncoderStep
from jina_triton_pipeline.limits import ModelLimits
from jina_triton_pipeline.parity import ParityError
from jina_triton_pipeline.tokenization import parse_buckets
from jina_triton_pipeline.torch_engine import TorchEngine, compiled_while_serving_line
from jina_triton_pipeline.triton_requests import model_parameters


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        folder = Path(args["model_repository"]) / args["model_version"]
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args.get('model_instance_device_id', 0)}" if gpu else "cpu"
        engine = TorchEngine(folder, params["precision"], device, int(params["threads"]),
                             parse_buckets(params.get("compile_buckets", "")))
        if engine.compiled is not None and not engine.compiled.utf8:
            pb_utils.Logger.log_warn(f"{args['model_name']}: no UTF-8 locale on this system; torch.compile may "
                                     "fail to read its templates (install C.UTF-8 or drop --compile-buckets)")
        started = time.perf_counter()
        engine.warm_up(int(params["token_budget"]))  # before the gate: it must pass on the path that serves
        try:
            cosine = engine.check_parity(folder, args["model_name"])
        except ParityError as exc:  # the model does not load
            pb_utils.Logger.log_error(str(exc))
            raise
        self.name, self.graphs = args["model_name"], engine.graphs
        compiled = f", compiled: {self.graphs} graphs" if engine.compiled else ""
        pb_utils.Logger.log_info(f"{args['model_name']}: parity gate passed on {engine.device} "
                                 f"({engine.precision}{compiled}), minimum cosine "
                                 f"{cosine:.7f}; warm-up and gate {time.perf_counter() - started:.1f} s; "
                                 f"numpy {np.__version__}")
        self.step = EncoderStep(pb_utils, engine, DlpackTensors(pb_utils), int(params["token_budget"]),
                                ModelLimits.load(params).max_length, args["model_name"],
                                args.get("model_instance_name", ""), float(params["max_padding"]))

    def execute(self, requests):
        responses = self.step.execute(requests)
        engine = self.step.engine
        if engine.graphs > self.graphs:  # a request waited for it: say so
            pb_utils.Logger.log_warn(compiled_while_serving_line(self.name, engine.graphs - self.graphs,
                                                                 engine.graphs, engine.compiled.limit))
            self.graphs = engine.graphs
        return responses
