"""Every build option, declared once: default, help, the templates that render it, and
whether `serve` may lower it. The CLI flags, the template values and `serve`'s lowering
flags are all derived from this class.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields, replace

from jina_triton_pipeline.packing import MAX_PADDING, PASS_TOKENS
from jina_triton_client.contract import (
    DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_LENGTH, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_TOKENS,
    DEFAULT_MAX_TEXT_BYTES, MIN_MAX_LENGTH, task_list)

TARGETS = ("cpu", "cuda", "tensorrt")
PRECISIONS = {"cpu": ("fp32", "int8"), "cuda": ("fp16", "bf16", "fp32"), "tensorrt": ("fp16",)}
# fp16 on a GPU: on an H100 the same speed as bf16 (852k vs 858k tokens/s eager, synthetic weights),
# and only fp16 met a 0.9999 parity bar (min cosine 0.9999977; bf16 0.99984)
DEFAULT_PRECISION = {"cpu": "fp32", "cuda": "fp16", "tensorrt": "fp16"}
# The padding bound per pass. On 2 CPU cores a pass costs its padded tokens whatever its size;
# on a GPU a pass of a few hundred tokens leaves it idle: with 1,024 rows per execute, a 32,768-token
# budget and 1.25, the mixed workload packs into ~18k-token passes at 1.11 padded/real (a packing
# simulation, `jina-triton gpu-check` prints it; GPU speed itself is unmeasured here).
CPU_MAX_PADDING, GPU_MAX_PADDING = MAX_PADDING, 1.25
# The cpu defaults come from `make bench-sweep` on this machine kind (README, "CPU defaults"): with a
# pass beside another on one thread (fixed_threads off: +13 % fp32, +18 % int8 at 2,048), a budget of
# 512 served the most (fp32 +10 % over 2,048, int8 +12 %); 2 encoder instances x 2 threads; no batching
# windows (the same tokens/s, a lone query 2.5 ms sooner); one preprocess instance as fast as two
CPU_TOKEN_BUDGET = 512

# The templates (model_repository/<name>/config.pbtxt.tmpl) an option is rendered into.
PYTHON_MODELS = ("preprocess", "encoder_onnx", "encoder_torch", "postprocess")
ENCODERS = ("encoder_onnx", "encoder_torch", "encoder_tensorrt")
EVERY_MODEL = PYTHON_MODELS + ("encoder_tensorrt", "ensemble")


def option(default, help: str, *, templates: tuple = (), choices=None, minimum: int | None = 1,
           lowered_by_serve: bool = False, kind: type = int):
    return field(default=default, metadata={"help": help, "templates": templates, "choices": choices,
                                            "minimum": minimum, "lowered_by_serve": lowered_by_serve, "kind": kind})


@dataclass(frozen=True)
class BuildOptions:
    tasks: str = option("", "the tasks to build, comma-separated (e.g. retrieval,clustering); the repository "
                        "holds and serves only their ensembles (default: every task of the checkpoint)",
                        minimum=None, kind=str)
    target: str = option("cpu", "cpu: onnxruntime engines (run and tested here); cuda: PyTorch engines on "
                         "the GPU (fp32 on a CPU when none is found); tensorrt: cuda plus TensorRT plans "
                         "built on first start (NOT RUN: no TensorRT here)", choices=TARGETS, minimum=None)
    precision: str | None = option(None, "cpu: fp32 | int8; cuda: fp16 | bf16 | fp32 (default fp32 on cpu, "
                                   "fp16 on cuda)", choices=("fp32", "int8", "fp16", "bf16"), minimum=None,
                                   templates=("encoder_torch",))
    max_length: int = option(DEFAULT_MAX_LENGTH, "tokens per text, prefix and EOS included",
                             templates=("preprocess", "postprocess", "encoder_onnx", "encoder_torch"),
                             minimum=MIN_MAX_LENGTH, lowered_by_serve=True)
    max_batch_size: int = option(DEFAULT_MAX_BATCH_SIZE, "texts per request",
                                 templates=("preprocess", "postprocess", "encoder_tensorrt", "ensemble"))
    max_text_bytes: int = option(DEFAULT_MAX_TEXT_BYTES, "UTF-8 bytes per text", templates=("preprocess",),
                                 lowered_by_serve=True)
    max_request_bytes: int = option(DEFAULT_MAX_REQUEST_BYTES, "UTF-8 text bytes per request",
                                    templates=("preprocess",), lowered_by_serve=True)
    max_request_tokens: int = option(DEFAULT_MAX_REQUEST_TOKENS, "tokens per request after truncation",
                                     templates=("preprocess",), lowered_by_serve=True)
    max_queue_size: int = option(256, "requests waiting per model; more are refused with UNAVAILABLE",
                                 templates=EVERY_MODEL[:-1])
    queue_timeout_us: int = option(60_000_000, "microseconds a request may wait in a model's queue "
                                   "(a client's shorter timeout wins)", templates=EVERY_MODEL[:-1])
    queue_delay_us: int | None = option(None, "encoder dynamic-batching window in microseconds (default 0 on cpu, "
                                        "where requests meet in the queue while the instances are busy and a "
                                        "lone query waits for nothing; 2000 on a GPU)", templates=ENCODERS, minimum=0)
    preprocess_queue_delay_us: int | None = option(None, "preprocess dynamic-batching window in microseconds "
                                                   "(default 0 on cpu, 500 on a GPU)", templates=("preprocess",),
                                                   minimum=0)
    token_budget: int | None = option(None, "padded tokens per encoder forward pass (default 512 on cpu, "
                                      "where a longer text runs alone in its pass; 32768 on a GPU)",
                                      templates=("encoder_onnx", "encoder_torch"))
    max_padding: float | None = option(None, "padded / real tokens allowed in one forward pass (default 1.10 on cpu, "
                                       "where padding costs in full; 1.25 on a GPU, where small passes cost more); "
                                       f"a pass may pad up to {PASS_TOKENS} tokens whatever the bound",
                                       templates=("encoder_onnx", "encoder_torch"), minimum=1, kind=float)
    encoder_max_rows: int | None = option(None, "rows one encoder execute takes from all the requests queued "
                                          "(its max_batch_size; default: the texts per request on cpu, 1024 on "
                                          "a GPU, so that several requests meet in one execute)",
                                          templates=("encoder_onnx", "encoder_torch"))
    compile_buckets: str = option("", "cuda target: torch.compile the encoder over these sequence-length buckets "
                                  "(e.g. 64,128,256,512; a pass is padded to the next; longer passes run eager); "
                                  "empty: eager. Each encoder compiles its buckets at load (~65 s on an H200)",
                                  templates=("encoder_torch",), minimum=None, kind=str)
    threads: int = option(2, "CPU threads per encoder instance", templates=("encoder_onnx", "encoder_torch"))
    fixed_threads: bool = option(False, "cpu: every encoder pass on --threads threads, even while another encoder "
                                 "pass runs (default: such a pass takes a 1-thread session of the same weights, so "
                                 "that busy instances never run more threads than there are cores)",
                                 templates=("encoder_onnx",), minimum=None, kind=bool)
    encoder_instances: int = option(2, "instances per encoder (cpu: 2, so a long request never holds the "
                                    "only one; a GPU runs one)", templates=ENCODERS)
    preprocess_instances: int | None = option(None, "preprocess instances (default: 1 on cpu, where the "
                                              "encoders need the cores; 3/4 of the cores, 2 to 16, on a GPU)",
                                              templates=("preprocess",))
    postprocess_instances: int | None = option(None, "postprocess instances (default: 1 on cpu; 1/4 of the "
                                               "cores, 1 to 4, on a GPU)", templates=("postprocess",))
    numpy_env: str = option("", "EXECUTION_ENV_PATH of the models that move numpy arrays (preprocess, postprocess, "
                            "the onnxruntime encoders): a Python environment with numpy<2, for a machine whose "
                            "stubs otherwise run numpy 2 (the GPU check's); empty: the server's environment",
                            minimum=None, kind=str)
    pack_env: bool = option(False, "pack the third-party packages the models import (requirements.txt) into "
                            "python_env.tar.gz at the repository's root, named by every Python model's "
                            "EXECUTION_ENV_PATH: a stock Triton with nothing added serves the repository "
                            "(the archive fits this build's Python version only)", minimum=None, kind=bool)

    def resolved(self, cores: int | None = None) -> "BuildOptions":
        """Target- and machine-dependent defaults filled in."""
        cores = cores or os.cpu_count() or 2
        gpu = self.target != "cpu"
        precision = self.precision or DEFAULT_PRECISION.get(self.target, "fp32")
        instances = self.encoder_instances
        if gpu and instances == BuildOptions.encoder_instances:
            instances = 1
        return replace(self, precision=precision, encoder_instances=instances,
                       token_budget=self.token_budget or (32768 if gpu else CPU_TOKEN_BUDGET),
                       max_padding=self.max_padding or (GPU_MAX_PADDING if gpu else CPU_MAX_PADDING),
                       queue_delay_us=_given(self.queue_delay_us, 2000 if gpu else 0),
                       preprocess_queue_delay_us=_given(self.preprocess_queue_delay_us, 500 if gpu else 0),
                       encoder_max_rows=self.encoder_max_rows or (1024 if gpu else self.max_batch_size),
                       preprocess_instances=self.preprocess_instances or (min(16, max(2, cores * 3 // 4)) if gpu
                                                                          else 1),
                       postprocess_instances=self.postprocess_instances or (min(4, max(1, cores // 4)) if gpu
                                                                            else 1))

    def check(self, model_max_length: int) -> None:
        for spec in fields(self):
            value, meta = getattr(self, spec.name), spec.metadata
            if meta["choices"] and value is not None and value not in meta["choices"]:
                raise ValueError(f"{spec.name} must be one of {', '.join(meta['choices'])}, not {value!r}")
            if meta["minimum"] is not None and value < meta["minimum"]:
                raise ValueError(f"{spec.name} must be at least {meta['minimum']}, not {value}")
        if self.precision not in PRECISIONS[self.target]:
            raise ValueError(f"the {self.target} target takes precision {' or '.join(PRECISIONS[self.target])}, "
                             f"not {self.precision}")
        if self.max_length > model_max_length:
            raise ValueError(f"max_length must be at most the model's {model_max_length}, not {self.max_length}")
        if self.target != "cpu" and self.token_budget < self.max_length:  # a cpu pass of one longer text runs alone
            raise ValueError(f"token_budget ({self.token_budget}) must be at least the max length "
                             f"({self.max_length}) on a GPU, whose passes are sized by the budget")
        if self.encoder_max_rows < self.max_batch_size:
            raise ValueError(f"encoder_max_rows ({self.encoder_max_rows}) must be at least the texts per request "
                             f"({self.max_batch_size})")
        if self.compile_buckets and any(not part.strip().isdigit() for part in self.compile_buckets.split(",")):
            raise ValueError(f"compile_buckets must be comma-separated lengths, not {self.compile_buckets!r}")
        task_list(self.tasks)  # names only known tasks
        if self.pack_env and self.numpy_env:
            raise ValueError("pack_env and numpy_env both set EXECUTION_ENV_PATH: choose one")
        if self.max_request_tokens < self.max_length:
            raise ValueError(f"max_request_tokens ({self.max_request_tokens}) must be at least the max length "
                             f"({self.max_length}) so that every text fits in a request")

    def served_tasks(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """The tasks this build writes: --tasks, each one the checkpoint must have."""
        wanted = task_list(self.tasks) if self.tasks else available
        missing = [task for task in wanted if task not in available]
        if missing:
            raise ValueError(f"the checkpoint has no {missing[0]!r} adapter; it has {', '.join(available)}")
        return wanted

    def template_values(self, template: str) -> dict:
        """The options a template renders, by name."""
        return {spec.name: getattr(self, spec.name) for spec in fields(self)
                if template in spec.metadata["templates"]}

    def as_dict(self) -> dict:
        return asdict(self)


def _given(value, default):
    return default if value is None else value


def serve_limits() -> tuple[str, ...]:
    """The options `serve` may lower at start (never raise)."""
    return tuple(spec.name for spec in fields(BuildOptions) if spec.metadata["lowered_by_serve"])


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option, its default and help from the declaration."""
    for spec in fields(BuildOptions):
        meta = spec.metadata
        default = spec.default
        help_text = meta["help"] + ("" if default is None else f" (default {default})")
        if meta["kind"] is bool:
            parser.add_argument(_flag(spec.name), dest=spec.name, action="store_true", help=meta["help"])
            continue
        parser.add_argument(_flag(spec.name), dest=spec.name, default=default, help=help_text,
                            type=None if meta["choices"] else meta["kind"], choices=meta["choices"])


def options_from_arguments(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(**{spec.name: getattr(args, spec.name) for spec in fields(BuildOptions)})


def add_serve_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """`serve --max-length N` etc.: lower a built limit for this run."""
    for spec in fields(BuildOptions):
        if spec.metadata["lowered_by_serve"]:
            parser.add_argument(_flag(spec.name), dest=spec.name, type=int,
                                help=f"lower the repository's {spec.metadata['help']}")
