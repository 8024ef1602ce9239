"""Render `config.pbtxt.tmpl` templates: `${name}` placeholders, strictly.

Like TensorRT-LLM's fill_template.py, but a placeholder without a value and a
value without a placeholder are both errors, so a typo never ships a config.
"""
from __future__ import annotations

import re
from pathlib import Path

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    pass


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict) -> str:
    wanted = placeholders(text)
    missing = sorted(wanted - set(values))
    if missing:
        raise TemplateError(f"no value for placeholder(s): {', '.join(missing)}")
    unused = sorted(set(values) - wanted)
    if unused:
        raise TemplateError(f"value(s) for no placeholder: {', '.join(unused)}")
    if "$" in PLACEHOLDER.sub("", text):  # values may hold one (Triton's $$TRITON_MODEL_DIRECTORY)
        raise TemplateError("a '$' outside a ${name} placeholder: malformed placeholder?")
    return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), text)


def render_file(template: Path, target: Path, values: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(template.read_text(), values))
