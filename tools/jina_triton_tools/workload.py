"""Deterministic multilingual workloads from the shipped corpus.

Profiles (token counts with the synthetic tokenizer, prefix and EOS included):
  query     8-32 tokens: short lines, as typed into a search box
  document  100-512 tokens: paragraphs stitched from sentences of one language
  mixed     half queries, half documents, shuffled: what a retrieval service sees
The same seed gives the same texts, so runs compare like with like.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from jina_triton_build.corpus import corpus_entries

PROFILES = {"query": (8, 32), "document": (100, 512)}
PROFILE_NAMES = ("query", "document", "mixed")


@dataclass(frozen=True)
class Text:
    text: str
    input_type: str   # the prefix it is sent with
    tokens: int       # tokens fed to the encoder


def _by_language() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for lang, sentence in corpus_entries():
        groups.setdefault(lang, []).append(sentence)
    return groups


class Workload:
    def __init__(self, tokenizer, seed: int = 0):
        """`tokenizer(texts, input_type) -> token counts`, e.g. from TextTokenizer."""
        self.count_tokens = tokenizer
        self.seed = seed
        self.languages = _by_language()

    def _one(self, rng: random.Random, kind: str) -> Text:
        low, high = PROFILES[kind]
        target = rng.randint(low, high)
        input_type = "query" if kind == "query" else "document"
        sentences = self.languages[rng.choice(sorted(self.languages))]
        words: list[str] = []
        text = ""
        for _ in range(200):
            if kind == "query":
                words = (words + rng.choice(sentences).split())[: max(1, len(words) + rng.randint(1, 4))]
                candidate = " ".join(words)
            else:
                candidate = (text + " " + rng.choice(sentences)).strip()
            tokens = self.count_tokens([candidate], input_type)[0]
            if tokens > high:
                break
            text = candidate
            if tokens >= target:
                break
        if not text:  # a first piece already too long: cut it by characters
            text = rng.choice(sentences)[:40]
        return Text(text, input_type, int(self.count_tokens([text], input_type)[0]))

    def texts(self, profile: str, count: int) -> list[Text]:
        if profile not in PROFILE_NAMES:
            raise ValueError(f"profile must be one of {PROFILE_NAMES}, not {profile!r}")
        rng = random.Random(f"{self.seed}:{profile}:{count}")
        if profile == "mixed":
            kinds = ["query"] * (count // 2) + ["document"] * (count - count // 2)
            rng.shuffle(kinds)
        else:
            kinds = [profile] * count
        return [self._one(rng, kind) for kind in kinds]


def token_counter(tokenizer_file, max_length: int = 8192):
    """A `tokenizer(texts, input_type) -> counts` function for Workload, from tokenizer.json."""
    from jina_triton_client.contract import TRUNCATE_END
    from jina_triton_pipeline.tokenization import TextTokenizer

    tokenizer = TextTokenizer(tokenizer_file, max_length)
    return lambda texts, input_type: [len(ids) for ids in tokenizer.token_ids(texts, input_type, TRUNCATE_END)]
