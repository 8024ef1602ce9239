"""The shipped multilingual corpus: our own sentences, `LANG<TAB>SENTENCE` per line.

It trains the synthetic tokenizer, calibrates the int8/uint8 ranges and feeds
the benchmark workloads. It is not a quality benchmark.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CORPUS_FILE = Path(__file__).with_name("multilingual.tsv")


@lru_cache(maxsize=1)
def corpus_entries() -> tuple[tuple[str, str], ...]:
    entries = []
    for line in CORPUS_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            lang, sentence = line.split("\t", 1)
            entries.append((lang, sentence))
    return tuple(entries)


def corpus_sentences() -> list[str]:
    return [sentence for _, sentence in corpus_entries()]
