"""Prefix, tokenize and truncate, exactly as the reference encoder does."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jina_triton_client.contract import PREFIXES, TRUNCATE_END, TRUNCATE_NONE
from jina_triton_client.validation import InvalidArgument

PAD_TOKEN = "<|pad|>"


@dataclass
class TokenizedBatch:
    input_ids: np.ndarray       # int64 [n, longest], right-padded
    attention_mask: np.ndarray  # int64 [n, longest]
    token_count: np.ndarray     # int32 [n, 1], prefix and EOS included


class TextTokenizer:
    """tokenizer.json of the checkpoint, with the official post-processing (EOS last)."""

    def __init__(self, tokenizer_file: str, max_length: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        specials = self.tokenizer.encode("", add_special_tokens=True).ids
        if len(specials) != 1:
            raise ValueError(f"expected the post-processor to add exactly one token (EOS), got {specials}")
        self.eos_id = specials[0]
        self.pad_id = self.tokenizer.token_to_id(PAD_TOKEN)
        if self.pad_id is None:
            raise ValueError(f"the tokenizer has no {PAD_TOKEN} token")
        self.max_length = max_length

    def token_ids(self, texts: list[str], input_type: str, truncate: str) -> list[list[int]]:
        """Token ids per text (prefix + content + EOS), truncated to max_length.

        Raises InvalidArgument for a text longer than max_length when truncate is NONE.
        """
        prefix = PREFIXES[input_type]
        encodings = self.tokenizer.encode_batch([prefix + text for text in texts], add_special_tokens=False)
        rows = []
        for index, encoding in enumerate(encodings):
            ids = encoding.ids
            if len(ids) + 1 > self.max_length:
                ids = self._truncate(index, ids, encoding.offsets, len(prefix), truncate)
            rows.append(ids + [self.eos_id])
        return rows

    def _truncate(self, index, ids, offsets, prefix_chars, truncate) -> list[int]:
        budget = self.max_length - 1
        if truncate == TRUNCATE_NONE:
            raise InvalidArgument(f"text[{index}]", f"has {len(ids) + 1} tokens, more than the maximum "
                                  f"{self.max_length}; send truncate 'END' or 'START' to cut it")
        if truncate == TRUNCATE_END:
            return ids[:budget]
        n_prefix = 0  # tokens lying wholly inside the prefix are kept
        while n_prefix < len(ids) and offsets[n_prefix][1] <= prefix_chars:
            n_prefix += 1
        return ids[:n_prefix] + ids[len(ids) - (budget - n_prefix):]

    def pad(self, rows: list[list[int]], buckets: tuple[int, ...] = ()) -> TokenizedBatch:
        """Right-pad to the longest row, or up to the next length bucket when buckets are given.

        Buckets make requests of similar lengths the same shape, which is what
        Triton's dynamic batcher needs to merge them for the GPU backends.
        """
        longest = max(len(row) for row in rows)
        longest = next((b for b in sorted(buckets) if b >= longest), longest)
        ids = np.full((len(rows), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        counts = np.array([[len(row)] for row in rows], dtype=np.int32)
        return TokenizedBatch(ids, mask, counts)

    def __call__(self, texts: list[str], input_type: str, truncate: str,
                 buckets: tuple[int, ...] = ()) -> TokenizedBatch:
        return self.pad(self.token_ids(texts, input_type, truncate), buckets)


def parse_buckets(text: str) -> tuple[int, ...]:
    """'16,32,64' -> (16, 32, 64); '' -> () (pad to the longest only)."""
    return tuple(sorted(int(part) for part in text.split(",") if part.strip()))
