"""encoder_<task>, `cpu` target: onnxruntime on the backbone graph (pooled in the graph) shared by
every task, its weights pre-packed for this machine where the build laid them out here, this
task's adapter bound as its inputs; a 1-thread session beside the wide one for passes that run
while another encoder's pass does (core_share.py)."""
import sys
from pathlib import Path

# the project's code this repository was built with lies beside this file (jina_triton_build's
# self_contained.py); first on sys.path, it wins over any other installed version
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_python_backend_utils as pb_utils

from jina_triton_pipeline.core_share import PassRegistry, server_folder
from jina_triton_pipeline.encoder_step import EncoderStep, NumpyTensors
from jina_triton_pipeline.limits import ModelLimits
from jina_triton_pipeline.onnx_engine import ADAPTER_FILE, OnnxEngine, ort_session, serving_graph
from jina_triton_pipeline.triton_requests import model_parameters


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        version = Path(args["model_repository"]) / args["model_version"]
        graph, why = serving_graph(version, params["graph"])
        pb_utils.Logger.log_info(f"{args['model_name']}: {graph.name}: {why}")
        threads = int(params["threads"])
        shared = threads > 1 and params["fixed_threads"].lower() != "true"
        engine = OnnxEngine(ort_session(graph, threads), int(params["vocab_size"]), version / ADAPTER_FILE,
                            narrow=ort_session(graph, 1) if shared else None,
                            registry=PassRegistry(server_folder()) if shared else None)
        engine.warm_up()
        self.step = EncoderStep(pb_utils, engine, NumpyTensors(pb_utils), int(params["token_budget"]),
                                ModelLimits.load(params).max_length, args["model_name"],
                                args.get("model_instance_name", ""), float(params["max_padding"]))

    def execute(self, requests):
        return self.step.execute(requests)
