"""The reference encoder: adapters differ; merged weights equal unmerged peft."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import sample_texts
from jina_triton_client.contract import TASKS


def test_embeddings_are_normalized_and_truncated(reference):
    for dims in (32, 256, 768):
        out = reference.encode(sample_texts(), "retrieval", "query", dimensions=dims)
        assert out.shape == (len(sample_texts()), dims) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_adapters_produce_different_embeddings(reference):
    texts = sample_texts()
    out = {task: reference.encode(texts, task) for task in TASKS}
    for i, first in enumerate(TASKS):
        for second in TASKS[i + 1:]:
            cosine = np.sum(out[first] * out[second], axis=1)
            assert cosine.max() < 0.999, (first, second, cosine)
    with reference.model.disable_adapter():
        batch = reference.tokenize(texts)
        hidden = reference.model(**batch).last_hidden_state
    base = hidden[np.arange(len(texts)), batch["attention_mask"].sum(1) - 1].detach().numpy()
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    assert np.sum(base * out["retrieval"], axis=1).max() < 0.999


def test_query_and_document_prefixes_differ(reference):
    texts = sample_texts()[:3]
    query = reference.encode(texts, "retrieval", "query")
    document = reference.encode(texts, "retrieval", "document")
    assert np.sum(query * document, axis=1).max() < 0.9999


@pytest.mark.parametrize("task", TASKS)
def test_merged_equals_unmerged(tiny_checkpoint, reference, task):
    import torch

    """The cuda target's merge (lora.merge_lora into transformers' EuroBertModel) against peft."""
    from jina_triton_build.checkpoint import load_backbone, load_lora
    from jina_triton_pipeline.lora import merge_lora

    batch = reference.tokenize(sample_texts(), "document")
    merged = load_backbone(tiny_checkpoint)
    lora, scaling = load_lora(tiny_checkpoint, task)
    assert merge_lora(dict(merged.named_parameters()), lora, scaling) == 7 * tiny_checkpoint.config["num_hidden_layers"]
    with torch.inference_mode():
        hidden = merged(**batch).last_hidden_state
    pooled = hidden[torch.arange(hidden.shape[0]), batch["attention_mask"].sum(1) - 1].numpy()
    want = reference.pooled(task, batch)
    assert np.abs(pooled - want).max() < 1e-4
    cosine = np.sum(pooled * want, axis=1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.99999


def test_padding_does_not_change_an_embedding(reference):
    texts = sample_texts()
    alone = np.concatenate([reference.encode([t], "clustering") for t in texts])
    together = reference.encode(texts, "clustering")
    assert np.sum(alone * together, axis=1).min() >= 0.99999
