"""Prefix, tokenize and truncate, exactly as the reference encoder does, at the cost of
the tokens kept: a long text is tokenized through a window that grows until it provably
holds the tokens to keep, never in full."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jina_triton_client.contract import PREFIXES, TRUNCATE_END, TRUNCATE_NONE
from jina_triton_client.validation import InvalidArgument

from .limits import check_request_tokens

PAD_TOKEN = "<|pad|>"
CHARS_PER_TOKEN = 4   # the first window: 4 characters per token to keep, doubled while too short
UNSURE_WORDS = 2      # pre-tokenizer pieces at a window's cut that may differ from the full text's


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
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.max_length = max_length

    def token_ids(self, texts: list[str], input_type: str, truncate: str,
                  max_total: int | None = None) -> list[list[int]]:
        """Token ids per text (prefix + content + EOS), truncated to max_length.

        Raises InvalidArgument for a text longer than max_length when truncate is NONE, and as
        soon as the request's tokens pass `max_total`: a request over its cap costs no more
        tokenizing than the cap.
        """
        prefix = PREFIXES[input_type]
        budget = self.max_length - 1  # room for the EOS
        token_lists: list = [None] * len(texts)
        short = [i for i, text in enumerate(texts) if len((prefix + text).encode("utf-8")) <= budget]
        # a token holds at least one byte: these cannot be too long
        for i, encoding in zip(short, self.tokenizer.encode_batch([prefix + texts[i] for i in short],
                                                                  add_special_tokens=False)):
            token_lists[i] = encoding.ids
        total = sum(len(token_lists[i]) + 1 for i in short)
        for i in sorted(set(range(len(texts))) - set(short)):
            check_request_tokens(total, max_total)
            token_lists[i] = self._long(i, texts[i], prefix, budget, truncate)
            total += len(token_lists[i]) + 1
        check_request_tokens(total, max_total)
        return [tokens + [self.eos_id] for tokens in token_lists]

    def _long(self, index: int, text: str, prefix: str, budget: int, truncate: str) -> list[int]:
        full = prefix + text
        head = self._head(full, budget + 1)
        if len(head) <= budget:
            return head  # the whole text fits
        if truncate == TRUNCATE_NONE:
            raise InvalidArgument(f"text[{index}]", f"has more than {self.max_length} tokens, the maximum; "
                                  f"send truncate 'END' or 'START' to cut it")
        if truncate == TRUNCATE_END:
            return head[:budget]
        # START: the tokens wholly inside the prefix, then the last content tokens
        start = self.tokenizer.encode(full[:len(prefix) + 64], add_special_tokens=False)
        n_prefix = sum(1 for _, end in start.offsets if end <= len(prefix))
        return start.ids[:n_prefix] + self._tail(full, budget - n_prefix, len(prefix))

    def _head(self, text: str, keep: int) -> list[int]:
        """The first `keep` tokens of `text` as tokenized in full (all of them if it has fewer)."""
        chars = keep * CHARS_PER_TOKEN
        while chars < len(text):
            encoding = self.tokenizer.encode(text[:chars], add_special_tokens=False)
            words = encoding.word_ids
            sure = [token for token, word in zip(encoding.ids, words) if word < words[-1] - (UNSURE_WORDS - 1)]
            if len(sure) >= keep:
                return sure[:keep]
            chars *= 2
        return self.tokenizer.encode(text, add_special_tokens=False).ids[:keep]

    def _tail(self, text: str, keep: int, protected: int) -> list[int]:
        """The last `keep` tokens of `text` as tokenized in full; windows never start
        inside the first `protected` characters (the prefix)."""
        chars = keep * CHARS_PER_TOKEN
        while len(text) - chars > protected:
            start = len(text) - chars
            while start > protected and text[start - 1].isdigit():
                start -= 1  # digits group by threes from the start of their run: never cut inside one
            encoding = self.tokenizer.encode(text[start:], add_special_tokens=False)
            words = encoding.word_ids
            sure = [token for token, word in zip(encoding.ids, words) if word > words[0] + (UNSURE_WORDS - 1)]
            if len(sure) >= keep:
                return sure[len(sure) - keep:]
            chars *= 2
        return self.tokenizer.encode(text, add_special_tokens=False).ids[-keep:]

    def pad(self, token_lists: list[list[int]], buckets: tuple[int, ...] = ()) -> TokenizedBatch:
        """Right-pad to the longest text, or up to the next length bucket when buckets are given.

        Buckets make requests of similar lengths the same shape, which is what
        Triton's dynamic batcher needs to merge them for the TensorRT backend.
        """
        longest = max(len(tokens) for tokens in token_lists)
        longest = next((b for b in sorted(buckets) if b >= longest), longest)
        ids, mask = right_pad(token_lists, self.pad_id, longest)
        counts = np.array([[len(tokens)] for tokens in token_lists], dtype=np.int32)
        return TokenizedBatch(ids, mask, counts)

    def __call__(self, texts: list[str], input_type: str, truncate: str,
                 buckets: tuple[int, ...] = (), max_total: int | None = None) -> TokenizedBatch:
        return self.pad(self.token_ids(texts, input_type, truncate, max_total), buckets)


def right_pad(token_lists: list, pad_id: int = 0, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """input_ids, attention_mask int64 [n, length or the longest]: each text's ids, then pad_id."""
    length = length or max(len(tokens) for tokens in token_lists)
    ids = np.full((len(token_lists), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_lists), length), dtype=np.int64)
    for i, tokens in enumerate(token_lists):
        ids[i, :len(tokens)], mask[i, :len(tokens)] = tokens, 1
    return ids, mask


def parse_buckets(text: str) -> tuple[int, ...]:
    """'16,32,64' -> (16, 32, 64); '' -> () (pad to the longest only)."""
    return tuple(sorted(int(part) for part in text.split(",") if part.strip()))
