"""The texts every engine is verified on, and the reference's answers to them.

One padded batch per input type of very different lengths (a word up to ~25 sentences),
run through the reference encoder (CPU fp32, adapter unmerged; a text at a time) once per
checkpoint and task, then cached: the ONNX export is checked against it at build time, and the
repository carries it as each encoder's parity gate (jina_triton_pipeline.parity).
"""
from __future__ import annotations

import numpy as np

from jina_triton_client.contract import INPUT_TYPES
from jina_triton_pipeline.parity import ParityCheck
from jina_triton_pipeline.tokenization import right_pad

from .cache import CacheEntry
from .corpus import corpus_sentences


def verification_texts() -> list[str]:
    sentences = corpus_sentences()
    return [sentences[0].split()[0], sentences[1], " ".join(sentences[2:5]),
            " ".join(sentences[5:30]), sentences[30][:12], " ".join(sentences[40:48])]


def verification_batch(reference) -> tuple[np.ndarray, np.ndarray]:
    """Both input types' texts as one right-padded batch (input_ids, attention_mask)."""
    token_lists = []
    for input_type in INPUT_TYPES:
        batch = reference.tokenize(verification_texts(), input_type)
        for ids, mask in zip(batch["input_ids"].numpy(), batch["attention_mask"].numpy()):
            token_lists.append(ids[mask.astype(bool)])
    return right_pad(token_lists, reference.tokenizer.pad_token_id or 0)


def reference_parity(entry: CacheEntry, task: str, reference_factory) -> ParityCheck:
    """The reference's pooled states for the verification batch, cached in the entry."""
    path = entry.directory / f"parity-{task}.npz"
    if path.is_file():
        return ParityCheck.load(path)
    reference = reference_factory()
    ids, mask = verification_batch(reference)
    import torch

    # each text alone, as a user of the official path embeds one: no padding to trust, and a
    # quarter of the padded batch's work (its longest row is 30x its shortest)
    rows = [reference.pooled(task, {"input_ids": torch.from_numpy(ids[i:i + 1, :n]),
                                    "attention_mask": torch.from_numpy(mask[i:i + 1, :n])})
            for i, n in enumerate(mask.sum(axis=1))]
    check = ParityCheck(ids, mask, np.concatenate(rows))
    partial = entry.partial(path)
    with open(partial, "wb") as file:
        np.savez(file, input_ids=check.input_ids, attention_mask=check.attention_mask, reference=check.reference)
    entry.commit(partial, path)
    return check
