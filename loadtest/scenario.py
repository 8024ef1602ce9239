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
    """Deterministic texts per workload profile, from the shipped corpus."""

    def __init__(self, tokenizer_file: str, size: int = 200, seed: int = 0):
        from jina_triton_serving.workload import Workload, token_counter

        workload = Workload(token_counter(tokenizer_file), seed)
        self.pools = {profile: workload.texts(profile, size) for profile in ("query", "document", "mixed")}

    def sample(self, rng: random.Random, profile: str, count: int):
        return rng.sample(self.pools[profile], count)
