"""The model repository's templates: one folder per Triton model, each a `config.pbtxt.tmpl`
(rendered by `jina-triton build`) and, for Python-backend models, a thin `1/model.py`.
They ship inside the wheel as package data of `jina_triton_models`."""
from __future__ import annotations

from pathlib import Path


def templates_dir() -> Path:
    return Path(__file__).resolve().parent
