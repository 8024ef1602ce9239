"""Scenarios (scenarios/*.toml) and the texts they send, shared by the locustfile and the runner."""
from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

from jina_triton_client.contract import OUTPUTS, TASKS

SCENARIOS = Path(__file__).with_name("scenarios")


@dataclass(frozen=True)
class RequestKind:
    weight: int
    task: str
    input_type: str
    profile: str
    texts: int
    dimensions: int
    output: str

    @property
    def name(self) -> str:
        return f"{self.task}:{self.input_type}:{self.output}:{self.dimensions}"


@dataclass(frozen=True)
class Scenario:
    name: str
    p95_ms_max: float
    requests: tuple[RequestKind, ...]

    def pick(self, rng: random.Random) -> RequestKind:
        return rng.choices(self.requests, weights=[r.weight for r in self.requests])[0]


def load_scenario(name_or_path: str) -> Scenario:
    path = Path(name_or_path)
    if not path.is_file():
        path = SCENARIOS / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.toml")))
        raise SystemExit(f"no scenario {name_or_path!r}; known: {known}")
    data = tomllib.loads(path.read_text())
    kinds = tuple(RequestKind(**entry) for entry in data["requests"])
    for kind in kinds:
        if kind.task not in TASKS or kind.output not in OUTPUTS:
            raise SystemExit(f"{path}: bad task or output in {kind}")
    return Scenario(data["name"], float(data.get("p95_ms_max", 60000)), kinds)


class TextPool:
    """Texts per workload profile: from a file (one per line) or built from the shipped corpus.

    Built in: queries of 20-120 UTF-8 bytes (about 8-32 tokens), documents of 400-2,000 bytes
    (about 100-512), one language each, seeded; token counts come back from the server.
    """

    QUERY_BYTES, DOCUMENT_BYTES, SHORT = (20, 120), (400, 2000), 200

    def __init__(self, texts_file: str | None = None, size: int = 200, seed: int = 0):
        rng = random.Random(seed)
        if texts_file:
            lines = [line.strip() for line in Path(texts_file).read_text().splitlines() if line.strip()]
            if not lines:
                raise SystemExit(f"{texts_file} holds no texts")
            short = [t for t in lines if len(t) <= self.SHORT] or lines
            long = [t for t in lines if len(t) > self.SHORT] or lines
        else:
            from jina_triton_build.corpus import corpus_entries

            languages: dict[str, list[str]] = {}
            for language, sentence in corpus_entries():
                languages.setdefault(language, []).append(sentence)
            short = [self._build(rng, languages, *self.QUERY_BYTES) for _ in range(size)]
            long = [self._build(rng, languages, *self.DOCUMENT_BYTES) for _ in range(size)]
        self.pools = {"query": short, "document": long, "mixed": short + long}

    @staticmethod
    def _build(rng: random.Random, languages: dict, low: int, high: int) -> str:
        sentences = languages[rng.choice(sorted(languages))]
        target, text = rng.randint(low, high), ""
        while len(text.encode()) < target:
            text = (text + " " + rng.choice(sentences)).strip()
        cut = text.encode()[:target].decode("utf-8", "ignore")
        return cut.rsplit(" ", 1)[0] if " " in cut[1:] else cut

    def sample(self, rng: random.Random, profile: str, count: int) -> list[str]:
        pool = self.pools[profile]
        return [rng.choice(pool) for _ in range(count)]
