"""The `cpu` target's engine: ONE ONNX graph of the backbone for every task, exported once, each
task's LoRA adapter an input of it (unmerged: ~6 % more FLOPs, one copy of the weights on disk
and, shared between the stub processes through the page cache, in memory). int8 is the dynamic
quantization of that graph (the adapters stay fp32). Verified against the reference for every
task, cached.

    backbone.onnx + backbone.onnx.data        (input_ids, attention_mask, <module>.lora_A/B, ...) -> pooled_state
    backbone.int8.onnx + backbone.int8.onnx.data
The graph pools inside (H floats per text leave it, never T x H); its weights live in the
external data file, which onnxruntime maps in place when pre-packing is off (onnx_engine.py).
An adapter becomes adapters/<task>.npz (fp32, B scaled by alpha/r, named as the graph's inputs),
a few MB beside the backbone. TensorRT takes one graph per task with its adapter folded in as
weights (`task_graph`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jina_triton_pipeline.internals import ATTENTION_MASK, INPUT_IDS, POOLED_STATE
from jina_triton_pipeline.lora import adapter_pairs, input_names
from jina_triton_pipeline.onnx_engine import OnnxEngine, ort_session, run_session  # noqa: F401 - the build's API too
from jina_triton_pipeline.packing import run_packed
from jina_triton_pipeline.parity import ParityError
from jina_triton_pipeline.pooling import last_token_torch, min_cosine

from .cache import CacheEntry, default_cache_dir
from .options import CPU_TOKEN_BUDGET
from .checkpoint import Checkpoint, adapter_config, architecture, load_backbone_state, load_lora
from .prepacked import ensure_prepacked
from .verification import reference_parity

ENGINE_FORMAT = 3  # bump whenever the export recipe changes: it invalidates the cache
OPSET = 17
PRECISIONS = ("fp32", "int8")
ENGINE_FILES = {"fp32": "backbone.onnx", "int8": "backbone.int8.onnx"}
DATA_SUFFIX = ".data"


class EngineError(Exception):
    pass


@dataclass
class EngineSet:
    entry: CacheEntry          # holds backbone*.onnx(.data), parity-<task>.npz, report.json
    precision: str
    report: dict
    checkpoint: Checkpoint
    sessions: dict = field(default_factory=dict, repr=False)
    prepacked: list = field(default_factory=list)  # this machine's serving graph, where it was built

    @property
    def directory(self) -> Path:
        return self.entry.directory

    def path(self, precision: str | None = None) -> Path:
        return self.directory / ENGINE_FILES[precision or self.precision]

    def files(self, precision: str | None = None) -> list[Path]:
        """The graph and its weights, as a repository links them."""
        graph = self.path(precision)
        return [graph, graph.with_name(graph.name + DATA_SUFFIX)]

    def adapter(self, task: str) -> Path:
        """The task's adapter as the backbone takes it (fp32, B scaled, by input name)."""
        return self.directory / "adapters" / f"{task}.npz"

    def task_report(self, task: str) -> dict:
        """What the build verified for one task: fp32 against the reference, int8 against fp32."""
        found = {"fp32": self.report.get("tasks", {}).get(task, {})}
        if "int8" in self.report:
            found["int8"] = {"min_cosine": self.report["int8"]["min_cosine"].get(task),
                             "against": self.report["int8"]["against"]}
        return found

    def engine(self, task: str, precision: str | None = None, threads: int | None = None,
               graph: Path | None = None) -> OnnxEngine:
        """The backbone (one session per graph, kept) with `task`'s adapter bound."""
        graph = graph or self.path(precision)
        if (graph, threads) not in self.sessions:
            self.sessions[(graph, threads)] = ort_session(graph, threads)
        return OnnxEngine(self.sessions[(graph, threads)], int(self.checkpoint.config["vocab_size"]),
                          self.adapter(task))


def cache_entry(checkpoint: Checkpoint, cache_dir: Path | None = None) -> CacheEntry:
    """The cache entry of a checkpoint's content and the export recipe."""
    import torch

    recipe = f"{checkpoint.fingerprint}:{ENGINE_FORMAT}:{OPSET}:{torch.__version__}"
    return CacheEntry((cache_dir or default_cache_dir()) / "engines" / hashlib.sha256(recipe.encode()).hexdigest()[:20])


# -- export ------------------------------------------------------------------------
def backbone_module(checkpoint: Checkpoint):
    """The plain-PyTorch EuroBERT (jina_triton_pipeline.eurobert) with the checkpoint's weights, fp32."""
    from jina_triton_pipeline.eurobert import EuroBert

    model = EuroBert(architecture(checkpoint))
    model.load_state_dict(load_backbone_state(checkpoint), strict=True)
    return model.eval()


def torch_pooled(checkpoint: Checkpoint):
    """pooled(task, ids, mask) from the plain-PyTorch backbone, each task's adapter unmerged (fp32)."""
    import torch

    model = backbone_module(checkpoint)
    adapters = {task: adapter_pairs(*load_lora(checkpoint, task)) for task in checkpoint.tasks}

    def pooled(task, ids, mask):
        model.use_adapter(adapters[task])
        with torch.inference_mode():
            ids, mask = torch.from_numpy(np.asarray(ids, np.int64)), torch.from_numpy(np.asarray(mask, np.int64))
            return last_token_torch(model(ids, mask), mask.sum(dim=1)).numpy()
    return pooled


def export_backbone(model, folder: Path, rank: int) -> Path:
    """backbone.onnx (+ .data) in `folder`: pooled_state [batch, H] at each row's EOS, the adapter's
    tensors (A [rank, in], B [out, rank] scaled) inputs named after their modules."""
    import onnx
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    modules = model.lora_modules()

    class Pooled(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, *lora):
            self.encoder.use_adapter({name: (lora[2 * i], lora[2 * i + 1]) for i, (name, _) in enumerate(modules)})
            return last_token_torch(self.encoder(input_ids, attention_mask), attention_mask.sum(dim=1))

    generator = torch.Generator().manual_seed(0)
    lora = []
    for _, module in modules:
        lora += [torch.randn((rank, module.in_features), generator=generator) * 0.01,
                 torch.randn((module.out_features, rank), generator=generator) * 0.01]
    names = [name for module, _ in modules for name in input_names(module)]
    ids = torch.randint(0, 1000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # trace with padding so the mask path is exercised
    axes = {0: "batch", 1: "sequence"}
    graph = folder / ENGINE_FILES["fp32"]
    inline = folder / "inline.onnx"
    with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(model).eval(), (ids, mask, *lora), str(inline),
                          input_names=[INPUT_IDS, ATTENTION_MASK, *names], output_names=[POOLED_STATE],
                          dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes, POOLED_STATE: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model.use_adapter(None)
    onnx.save_model(onnx.load(str(inline)), str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=graph.name + DATA_SUFFIX, size_threshold=1024)
    inline.unlink()
    return graph


def write_adapter(checkpoint: Checkpoint, task: str, target: Path, entry: CacheEntry) -> Path:
    """adapters/<task>.npz from the checkpoint's adapter (written once per checkpoint)."""
    if target.is_file():
        return target
    lora, scaling = load_lora(checkpoint, task)
    arrays = {}
    for module, (a, b) in adapter_pairs(lora, scaling).items():
        name_a, name_b = input_names(module)
        arrays[name_a], arrays[name_b] = a.numpy(), b.numpy()
    partial = entry.partial(target)
    with open(partial, "wb") as file:
        np.savez(file, **arrays)
    entry.commit(partial, target)
    return target


def load_graph(path: Path):
    """The graph with its external weights read in. onnx's own loader refuses a weights file with
    several hard links, and the repository's encoders hard-link the cache's."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    with open(path.with_name(path.name + DATA_SUFFIX), "rb") as data:
        for tensor in _get_all_tensors(model):
            if uses_external_data(tensor):
                info = ExternalDataInfo(tensor)
                data.seek(info.offset or 0)
                tensor.raw_data = data.read(info.length) if info.length else data.read()
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.DEFAULT
    return model


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 of the weights (MatMuls whose B is a weight; the adapters' stay fp32), external data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(load_graph(source), str(target), weight_type=QuantType.QInt8,
                             use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    produced = target.with_name(target.name + DATA_SUFFIX)
    if not produced.is_file():  # onnxruntime names the weights file after the graph, or wrote them inline
        import onnx

        onnx.save_model(onnx.load(str(target)), str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=produced.name, size_threshold=1024)


def task_graph(engines: EngineSet, task: str, target: Path) -> Path:
    """One task's graph with its adapter folded in as weights, for TensorRT (one engine per task)."""
    import onnx
    from onnx import numpy_helper

    model = load_graph(engines.path("fp32"))
    pairs = engines.engine(task, "fp32").adapter_inputs
    values = [numpy_helper.from_array(np.ascontiguousarray(array), name) for name, array in pairs.items()]
    kept = [value for value in model.graph.input if value.name not in pairs]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(values)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=target.name + DATA_SUFFIX, size_threshold=1024)
    return target


# -- the build -----------------------------------------------------------------
def build_engines(checkpoint: Checkpoint, precision: str = "fp32", cache_dir: Path | None = None,
                  progress=None, reference=None, tasks: tuple[str, ...] | None = None,
                  prepack: bool = False) -> EngineSet:
    """Export (or reuse) the backbone, verified against the reference encoder for every task served
    (`tasks`, default all); every task's adapter is written (a few MB each: calibration takes all);
    with `prepack`, the serving graph of `precision` pre-packed for this machine (prepacked.py)."""
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    report_step = progress or (lambda message: None)
    entry = cache_entry(checkpoint, cache_dir)
    with entry.locked():
        report = entry.report
        engines = EngineSet(entry, precision, report, checkpoint)
        wanted = ("fp32", "int8") if precision == "int8" else ("fp32",)
        tasks = tasks or checkpoint.tasks
        verified = all(task in report.get("tasks", {}) for task in tasks)
        verified = verified and all(engines.adapter(task).is_file() for task in checkpoint.tasks)
        if precision == "int8":
            verified = verified and all(task in report.get("int8", {}).get("min_cosine", {}) for task in tasks)

        def make_reference():
            nonlocal reference
            if reference is None:
                from .reference import ReferenceEncoder
                reference = ReferenceEncoder(checkpoint)
            return reference

        checks = {task: reference_parity(entry, task, make_reference) for task in tasks}  # cached per task
        if verified and all(_intact(engines, p) for p in wanted):
            report_step(f"engines reused from {entry.directory}")
            return _with_prepacked(engines, checks, prepack, report_step)
        for task in checkpoint.tasks:
            write_adapter(checkpoint, task, engines.adapter(task), entry)
        if not _intact(engines, "fp32"):
            started = time.perf_counter()
            rank = int(adapter_config(checkpoint, checkpoint.tasks[0])["r"])
            with _staged(entry) as folder:
                export_backbone(backbone_module(checkpoint), folder, rank)
                report["tasks"] = _verified(engines, folder / ENGINE_FILES["fp32"], checks, "fp32")
                report["fp32"] = {"digests": _commit(entry, folder, engines.files("fp32"))}
            report["export_seconds"] = round(time.perf_counter() - started, 1)
            report_step(f"backbone exported and verified in {report['export_seconds']} s")
        else:  # the backbone is there: verify the tasks it was not verified for yet
            report["tasks"] = {**report.get("tasks", {}),
                               **_verified(engines, engines.path("fp32"), {t: checks[t] for t in tasks
                                                                           if t not in report.get("tasks", {})},
                                           "fp32")}
        report_step(f"verified for {', '.join(tasks)}: min cosine vs reference "
                    f"{min(report['tasks'][t]['min_cosine'] for t in tasks):.7f}")
        entry.save_report(report)
        if precision == "int8":
            _quantized(engines, checks, report_step)
            entry.save_report(report)
        return _with_prepacked(engines, checks, prepack, report_step)


def _with_prepacked(engines: EngineSet, checks: dict, prepack: bool, report_step) -> EngineSet:
    if prepack:
        engines.prepacked = ensure_prepacked(engines, engines.precision, checks, _staged, _commit, report_step)
        engines.entry.save_report(engines.report)
    return engines


def _quantized(engines: EngineSet, checks: dict, report_step) -> None:
    """The int8 graph (quantized once) and, for each task not compared yet, its cosine to fp32."""
    report = engines.report
    if not _intact(engines, "int8"):
        started = time.perf_counter()
        with _staged(engines.entry) as folder:
            quantize_int8(engines.path("fp32"), folder / ENGINE_FILES["int8"])
            cosines = _int8_cosines(engines, folder / ENGINE_FILES["int8"], checks)
            report["int8"] = {"digests": _commit(engines.entry, folder, engines.files("int8")),
                              "min_cosine": cosines, "against": "fp32 engine"}
        report["quantize_seconds"] = round(time.perf_counter() - started, 1)
        report_step(f"int8 quantized in {report['quantize_seconds']} s")
    missing = {task: check for task, check in checks.items() if task not in report["int8"]["min_cosine"]}
    report["int8"]["min_cosine"].update(_int8_cosines(engines, engines.path("int8"), missing))
    report_step(f"int8 min cosine vs fp32 {min(report['int8']['min_cosine'][t] for t in checks):.5f}")


def _int8_cosines(engines: EngineSet, graph: Path, checks: dict) -> dict:
    found = {}
    for task, check in checks.items():
        found[task] = min_cosine(packed_pooled(engines.engine(task, graph=graph), check),
                                 packed_pooled(engines.engine(task, "fp32"), check))
    return found


def packed_pooled(engine: OnnxEngine, check) -> np.ndarray:
    """The check's rows packed as the encoders pack a batch (length-sorted, padding bounded)."""
    return run_packed([(check.input_ids, check.attention_mask)], CPU_TOKEN_BUDGET, engine.forward).pooled[0]


def _verified(engines: EngineSet, graph: Path, checks: dict, precision: str) -> dict:
    """Every task through the staged graph against the reference; a graph that fails stays out."""
    found = {}
    for task, check in checks.items():
        engine = engines.engine(task, graph=graph)
        try:
            cosine = check.gate(packed_pooled(engine, check), precision, f"{task} ONNX engine")
        except ParityError as exc:
            raise EngineError(str(exc)) from None
        found[task] = {"min_cosine": cosine, "against": "reference (peft, unmerged)", "texts": len(check.input_ids)}
    return found


class _staged:
    """A private folder in the cache entry where files are written under their final names; it
    goes away whatever happens (what was committed from it has moved)."""

    def __init__(self, entry: CacheEntry):
        self.folder = entry.directory / f".staging-{os.getpid()}"

    def __enter__(self) -> Path:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()
        return self.folder

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _commit(entry: CacheEntry, folder: Path, targets: list[Path]) -> dict:
    """Move the staged files into place, the graph last (it names its weights file); their digests."""
    digests = {}
    for target in reversed(targets):
        digests[target.name] = entry.commit(folder / target.name, target)
    return digests


def _intact(engines: EngineSet, precision: str) -> bool:
    recorded = engines.report.get(precision, {}).get("digests", {})
    return bool(recorded) and all(engines.entry.intact(path, recorded.get(path.name))
                                  for path in engines.files(precision))
