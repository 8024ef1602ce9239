"""The reference encoder: the oracle every served embedding is checked against.

It follows the official encode path (the checkpoint's modeling_jina_embeddings_v5.encode) on the native
EuroBertModel with the task's LoRA adapter active through peft, unmerged:
prefix -> tokenizer(padding, truncation at max_length, EOS kept last) ->
forward -> hidden state at attention_mask.sum(1)-1 -> Matryoshka slice ->
L2 normalize.

Truncation modes other than END are ours (the official code only truncates at
the end): START keeps the prefix tokens and EOS and drops the earliest content
tokens; NONE refuses a text that does not fit.
"""
from __future__ import annotations

import numpy as np

from jina_triton_client.contract import (
    DEFAULT_INPUT_TYPE, DEFAULT_MAX_LENGTH, DEFAULT_TRUNCATE, INPUT_TYPES, PREFIXES,
    TRUNCATE_END, TRUNCATE_MODES, TRUNCATE_NONE)

from .checkpoint import Checkpoint, check_task, load_peft_model, open_checkpoint


class TooLongError(ValueError):
    pass


class ReferenceEncoder:
    def __init__(self, checkpoint: Checkpoint | str, max_length: int = DEFAULT_MAX_LENGTH):
        import torch
        from transformers import PreTrainedTokenizerFast

        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
        self.max_length = max_length
        # the fast tokenizer from tokenizer.json and tokenizer_config.json, by name: AutoTokenizer would
        # dispatch on config.json's model_type (unknown to transformers, its fallbacks differ by version)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.checkpoint.path))
        self.model = load_peft_model(self.checkpoint)
        self._torch = torch

    # -- tokenization ------------------------------------------------------
    def tokenize(self, texts: list[str], input_type: str = DEFAULT_INPUT_TYPE,
                 truncate: str = DEFAULT_TRUNCATE, max_length: int | None = None):
        """Padded `input_ids`/`attention_mask` tensors, as the official path builds them."""
        if input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {INPUT_TYPES}, not {input_type!r}")
        if truncate not in TRUNCATE_MODES:
            raise ValueError(f"truncate must be one of {TRUNCATE_MODES}, not {truncate!r}")
        max_length = max_length or self.max_length
        prefix = PREFIXES[input_type]
        prefixed = [prefix + text for text in texts]
        if truncate == TRUNCATE_END:
            return self.tokenizer(prefixed, padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
        plain = self.tokenizer(prefixed, add_special_tokens=False, return_offsets_mapping=True)
        rows = []
        for index, (ids, offsets) in enumerate(zip(plain["input_ids"], plain["offset_mapping"])):
            if len(ids) + 1 > max_length:
                if truncate == TRUNCATE_NONE:
                    raise TooLongError(f"text {index} has {len(ids) + 1} tokens, more than {max_length}")
                n_prefix = 0
                while n_prefix < len(ids) and offsets[n_prefix][1] <= len(prefix):
                    n_prefix += 1
                keep = max_length - 1 - n_prefix
                ids = ids[:n_prefix] + ids[len(ids) - keep:]
            rows.append(ids + [self.tokenizer.eos_token_id])
        return self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")

    # -- encoding ------------------------------------------------------------
    def pooled(self, task: str, batch) -> np.ndarray:
        """Un-normalized last-token states [B, H] for one tokenized batch."""
        check_task(task, self.checkpoint.tasks)
        torch = self._torch
        self.model.set_adapter(task)
        with torch.inference_mode():
            hidden = self.model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state
            last = batch["attention_mask"].sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0]), last].float().numpy()

    def encode(self, texts: list[str], task: str, input_type: str = DEFAULT_INPUT_TYPE,
               dimensions: int | None = None, truncate: str = DEFAULT_TRUNCATE,
               max_length: int | None = None, batch_size: int = 32) -> np.ndarray:
        """L2-normalized embeddings [N, dimensions] (float32)."""
        width = self.checkpoint.hidden_size
        dimensions = dimensions or width
        if not 1 <= dimensions <= width:
            raise ValueError(f"dimensions must be between 1 and {width}, not {dimensions}")
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start:start + batch_size], input_type, truncate, max_length)
            parts.append(self.pooled(task, batch))
        pooled = np.concatenate(parts)[:, :dimensions]
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def token_counts(self, texts: list[str], input_type: str = DEFAULT_INPUT_TYPE,
                     truncate: str = DEFAULT_TRUNCATE, max_length: int | None = None) -> np.ndarray:
        batch = self.tokenize(texts, input_type, truncate, max_length)
        return batch["attention_mask"].sum(dim=1).numpy().astype(np.int32)
