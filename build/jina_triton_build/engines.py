"""One ONNX encoder per task for the `cpu` and `tensorrt` targets: merge the LoRA adapter,
export, verify against the reference, cache.

Each engine maps (input_ids, attention_mask) int64 [batch, sequence] to pooled_state
float32 [batch, hidden]: last-token pooling happens inside the graph, so an encoder
hands H floats per text to postprocess, never T x H. Matryoshka, normalization and
quantization happen in postprocess.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path


from jina_triton_pipeline.internals import ATTENTION_MASK, INPUT_IDS, POOLED_STATE
from jina_triton_pipeline.lora import merge_lora
from jina_triton_pipeline.onnx_engine import ort_session, run_session  # noqa: F401 - the build's API too
from jina_triton_pipeline.parity import ParityCheck, ParityError
from jina_triton_pipeline.pooling import last_token_torch, min_cosine

from .cache import CacheEntry, default_cache_dir
from .checkpoint import Checkpoint, load_backbone, load_lora
from .verification import reference_parity

ENGINE_FORMAT = 2  # bump whenever the export recipe changes: it invalidates the cache
OPSET = 17
PRECISIONS = ("fp32", "int8")
ENGINE_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


class EngineError(Exception):
    pass


@dataclass
class EngineSet:
    entry: CacheEntry          # holds <task>/model*.onnx, parity-<task>.npz, report.json
    precision: str
    report: dict

    @property
    def directory(self) -> Path:
        return self.entry.directory

    def path(self, task: str, precision: str | None = None) -> Path:
        return self.directory / task / ENGINE_FILES[precision or self.precision]


def cache_entry(checkpoint: Checkpoint, cache_dir: Path | None = None) -> CacheEntry:
    """The cache entry of a checkpoint's content and the export recipe."""
    import torch

    recipe = f"{checkpoint.fingerprint}:{ENGINE_FORMAT}:{OPSET}:{torch.__version__}"
    return CacheEntry((cache_dir or default_cache_dir()) / "engines" / hashlib.sha256(recipe.encode()).hexdigest()[:20])


# -- merge & export ------------------------------------------------------------
def merged_encoder(checkpoint: Checkpoint, task: str, backbone=None):
    """transformers' EuroBertModel with `task`'s adapter merged in (fp32).

    `backbone`, if given, is copied rather than loaded again from disk.
    """
    model = copy.deepcopy(backbone) if backbone is not None else load_backbone(checkpoint)
    lora, scaling = load_lora(checkpoint, task)
    merge_lora(dict(model.named_parameters()), lora, scaling)
    return model.eval()


def export_onnx(model, path: Path) -> None:
    """pooled_state [batch, H]: the final hidden state at each row's EOS."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    class Pooled(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return last_token_torch(hidden, attention_mask.sum(dim=1))

    ids = torch.randint(0, 1000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # trace with padding so the mask path is exercised
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(model).eval(), (ids, mask), str(path),
                          input_names=[INPUT_IDS, ATTENTION_MASK], output_names=[POOLED_STATE],
                          dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes, POOLED_STATE: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


# -- the build -----------------------------------------------------------------
def build_engines(checkpoint: Checkpoint, precision: str = "fp32", cache_dir: Path | None = None,
                  progress=None, reference=None) -> EngineSet:
    """Export (or reuse) one engine per task, each verified against the reference encoder."""
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    report_step = progress or (lambda message: None)
    entry = cache_entry(checkpoint, cache_dir)
    with entry.locked():
        report = entry.report
        engines = EngineSet(entry, precision, report)
        todo = [task for task in checkpoint.tasks if not _intact(engines, task, "fp32")
                or (precision == "int8" and not _intact(engines, task, "int8"))]
        if not todo:
            report_step(f"engines reused from {entry.directory}")
            return engines

        def make_reference():
            nonlocal reference
            if reference is None:
                from .reference import ReferenceEncoder
                reference = ReferenceEncoder(checkpoint)
            return reference

        backbone = None
        for task in _progress_bar(todo, "encoders"):
            check = reference_parity(entry, task, make_reference)
            record = report.setdefault(task, {})
            if not _intact(engines, task, "fp32"):
                backbone = backbone if backbone is not None else load_backbone(checkpoint)
                started = time.perf_counter()
                record["fp32"] = _export_verified(entry, checkpoint, task, backbone, engines.path(task, "fp32"), check)
                record["export_seconds"] = round(time.perf_counter() - started, 1)
                report_step(f"{task}: exported and verified in {record['export_seconds']} s, "
                            f"min cosine vs reference {record['fp32']['min_cosine']:.7f}")
            if precision == "int8" and not _intact(engines, task, "int8"):
                started = time.perf_counter()
                path = engines.path(task, "int8")
                partial = entry.partial(path)
                quantize_int8(engines.path(task, "fp32"), partial)
                record["quantize_seconds"] = round(time.perf_counter() - started, 1)
                cosine = min_cosine(run_session(ort_session(partial), check.input_ids, check.attention_mask),
                                    run_session(ort_session(engines.path(task, "fp32")), check.input_ids,
                                                check.attention_mask))
                record["int8"] = {"min_cosine": cosine, "against": "fp32 engine",
                                  "digest": entry.commit(partial, path)}
                report_step(f"{task}: int8 quantized in {record['quantize_seconds']} s, "
                            f"min cosine vs fp32 {cosine:.5f}")
            entry.save_report(report)
        return engines


def _export_verified(entry: CacheEntry, checkpoint, task, backbone, path: Path, check: ParityCheck) -> dict:
    """Export the merged encoder and check it against the reference; only a good engine stays."""
    partial = entry.partial(path)
    export_onnx(merged_encoder(checkpoint, task, backbone), partial)
    try:
        cosine = check.gate(run_session(ort_session(partial), check.input_ids, check.attention_mask),
                            "fp32", f"{task} ONNX engine")
    except ParityError as exc:
        partial.unlink()
        raise EngineError(str(exc)) from None
    return {"min_cosine": cosine, "against": "reference (peft, unmerged)", "texts": len(check.input_ids),
            "digest": entry.commit(partial, path)}


def _intact(engines: EngineSet, task: str, precision: str) -> bool:
    recorded = engines.report.get(task, {}).get(precision, {}).get("digest")
    return engines.entry.intact(engines.path(task, precision), recorded)


def _progress_bar(items, what: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=what, unit="task")
