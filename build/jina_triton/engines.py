"""One ONNX encoder per task: merge the LoRA adapter, export, verify, cache.

Each engine maps (input_ids, attention_mask) int64 [batch, sequence] to
last_hidden_state float32 [batch, sequence, hidden] — the I/O of the official
ONNX exports. Pooling, Matryoshka and quantization happen in postprocess.

Engines live in a cache keyed by the checkpoint's content hash and the export
recipe, so a second build of an unchanged checkpoint reuses them.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jina_triton_client.contract import ATTENTION_MASK, INPUT_IDS, LAST_HIDDEN_STATE, POOLED_STATE

from .checkpoint import Checkpoint, load_backbone, load_lora
from .corpus import corpus_sentences

ENGINE_FORMAT = 1  # bump whenever the export recipe changes: it invalidates the cache
OPSET = 17
PRECISIONS = ("fp32", "int8")
# "pooled": the fp32 graph with last-token pooling folded in, for the GPU backends
ENGINE_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "pooled": "model.pooled.onnx"}
FP32_MIN_COSINE = 0.99999
VERIFY_DIMENSIONS = (32, 256, 768)


class EngineError(Exception):
    pass


@dataclass
class EngineSet:
    directory: Path            # cache entry holding <task>/model*.onnx and report.json
    precision: str
    report: dict

    def path(self, task: str, precision: str | None = None) -> Path:
        return self.directory / task / ENGINE_FILES[precision or self.precision]


def default_cache_dir() -> Path:
    root = os.environ.get("JINA_TRITON_CACHE") or Path.home() / ".cache" / "jina-triton"
    return Path(root) / "engines"


def cache_key(fingerprint: str) -> str:
    import hashlib

    import torch
    recipe = f"{fingerprint}:{ENGINE_FORMAT}:{OPSET}:{torch.__version__}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:20]


# -- merge & export ------------------------------------------------------------
def merge_adapter(model, lora: dict, scaling: float) -> None:
    """W <- W + (B @ A) * alpha/r for every LoRA target, in place."""
    import torch

    modules = dict(model.named_modules())
    prefix = "base_model.model."
    with torch.no_grad():
        for key, lora_a in lora.items():
            if ".lora_A." not in key:
                continue
            name = key[len(prefix):].split(".lora_A.")[0]
            lora_b = lora[key.replace(".lora_A.", ".lora_B.")]
            modules[name].weight += (lora_b @ lora_a) * scaling


def merged_encoder(checkpoint: Checkpoint, task: str, backbone=None):
    """The native EuroBertModel with `task`'s adapter merged in (fp32).

    `backbone`, if given, is copied rather than loaded again from disk.
    """
    model = copy.deepcopy(backbone) if backbone is not None else load_backbone(checkpoint)
    lora, scaling = load_lora(checkpoint, task)
    merge_adapter(model, lora, scaling)
    return model.eval()


def export_onnx(model, path: Path, pooled: bool = False) -> None:
    """last_hidden_state [batch, sequence, H]; with `pooled`, pooled_state [batch, H] at each EOS."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    class HiddenStates(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if not pooled:
                return hidden
            last = attention_mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0]), last]

    ids = torch.randint(0, 1000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # trace with padding so the mask path is exercised
    axes = {0: "batch", 1: "sequence"}
    output = POOLED_STATE if pooled else LAST_HIDDEN_STATE
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(HiddenStates(model).eval(), (ids, mask), str(path),
                          input_names=[INPUT_IDS, ATTENTION_MASK], output_names=[output],
                          dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes, output: {0: "batch"} if pooled else axes},
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


# -- running and checking an engine --------------------------------------------
def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 2)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def pooled_from_session(session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Last-token states [B, H] from either kind of engine."""
    output = session.get_outputs()[0].name
    result = session.run([output], {INPUT_IDS: input_ids.astype(np.int64),
                                    ATTENTION_MASK: attention_mask.astype(np.int64)})[0]
    if output == POOLED_STATE:
        return result
    last = attention_mask.sum(axis=1) - 1
    return result[np.arange(result.shape[0]), last]


def normalized(pooled: np.ndarray, dimensions: int) -> np.ndarray:
    sliced = pooled[:, :dimensions]
    return sliced / np.linalg.norm(sliced, axis=1, keepdims=True)


def min_cosine(a: np.ndarray, b: np.ndarray, dimensions=VERIFY_DIMENSIONS) -> float:
    """Smallest row cosine between two pooled matrices over the Matryoshka widths."""
    worst = 1.0
    for dims in dimensions:
        if dims <= a.shape[1]:
            worst = min(worst, float(np.min(np.sum(normalized(a, dims) * normalized(b, dims), axis=1))))
    return worst


def verification_texts() -> list[str]:
    """A padded batch of very different lengths: a word up to ~25 sentences."""
    sentences = corpus_sentences()
    return [sentences[0].split()[0], sentences[1], " ".join(sentences[2:5]),
            " ".join(sentences[5:30]), sentences[30][:12], " ".join(sentences[40:48])]


# -- the build -----------------------------------------------------------------
def build_engines(checkpoint: Checkpoint, precision: str = "fp32", cache_dir: Path | None = None,
                  progress=None, reference=None, pooled: bool = False) -> EngineSet:
    """Export (or reuse) one engine per task and verify it against the reference encoder.

    `pooled` also exports the fp32 graph with pooling folded in (GPU targets).
    """
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    report_step = progress or (lambda message: None)
    directory = (cache_dir or default_cache_dir()) / cache_key(checkpoint.fingerprint)
    report_file = directory / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    engines = EngineSet(directory=directory, precision=precision, report=report)
    todo = [t for t in checkpoint.tasks if not _complete(engines, t)
            or (pooled and "pooled" not in report.get(t, {}))]
    if not todo:
        report_step(f"engines reused from {directory}")
        return engines

    from .reference import ReferenceEncoder
    reference = reference or ReferenceEncoder(checkpoint)
    texts = verification_texts()
    batches = {kind: reference.tokenize(texts, kind) for kind in ("query", "document")}
    backbone = load_backbone(checkpoint)
    for task in _progress_bar(todo, "encoders"):
        entry = report.setdefault(task, {})
        fp32 = directory / task / ENGINE_FILES["fp32"]
        if not (fp32.is_file() and "fp32" in entry):
            started = time.perf_counter()
            entry["fp32"] = _export_verified(checkpoint, task, backbone, fp32, False, batches, reference)
            entry["export_seconds"] = round(time.perf_counter() - started, 1)
            report_step(f"{task}: fp32 exported and verified in {entry['export_seconds']} s, "
                        f"min cosine vs reference {entry['fp32']['min_cosine']:.7f}")
        if pooled and "pooled" not in entry:
            path = directory / task / ENGINE_FILES["pooled"]
            entry["pooled"] = _export_verified(checkpoint, task, backbone, path, True, batches, reference)
            report_step(f"{task}: pooled fp32 graph, min cosine vs reference {entry['pooled']['min_cosine']:.7f}")
        if precision == "int8" and "int8" not in entry:
            started = time.perf_counter()
            int8 = directory / task / ENGINE_FILES["int8"]
            quantize_int8(fp32, int8)
            entry["quantize_seconds"] = round(time.perf_counter() - started, 1)
            entry["int8"] = _verify(int8, task, batches, reference, against=fp32)
            report_step(f"{task}: int8 quantized in {entry['quantize_seconds']} s, "
                        f"min cosine vs fp32 {entry['int8']['min_cosine']:.5f}")
        report_file.write_text(json.dumps(report, indent=2))
    return engines


def _export_verified(checkpoint, task, backbone, path: Path, pooled: bool, batches, reference) -> dict:
    """Export the merged encoder, check it against the reference; only a good engine stays."""
    partial = path.with_suffix(".partial")
    export_onnx(merged_encoder(checkpoint, task, backbone), partial, pooled=pooled)
    verdict = _verify(partial, task, batches, reference)
    if verdict["min_cosine"] < FP32_MIN_COSINE:
        partial.unlink()
        raise EngineError(f"{task}: {'pooled ' if pooled else ''}fp32 engine cosine {verdict['min_cosine']:.7f} "
                          f"vs the reference is below {FP32_MIN_COSINE}")
    partial.replace(path)
    return verdict


def _complete(engines: EngineSet, task: str) -> bool:
    return engines.path(task).is_file() and engines.precision in engines.report.get(task, {})


def _verify(path: Path, task: str, batches: dict, reference, against: Path | None = None) -> dict:
    session = ort_session(path)
    other = ort_session(against) if against else None
    worst = 1.0
    for batch in batches.values():
        ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
        got = pooled_from_session(session, ids, mask)
        want = pooled_from_session(other, ids, mask) if other else reference.pooled(task, batch)
        worst = min(worst, min_cosine(got, want))
    return {"min_cosine": worst, "against": "fp32 engine" if against else "reference (peft, unmerged)",
            "texts": sum(len(b["input_ids"]) for b in batches.values())}


def _progress_bar(items, what: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=what, unit="task")


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
