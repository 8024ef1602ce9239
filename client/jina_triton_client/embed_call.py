"""A call's arguments, checked with the server's own rules before anything is sent."""
from __future__ import annotations

from dataclasses import dataclass

from .contract import (
    DEFAULT_INPUT_TYPE, DEFAULT_TRUNCATE, MAX_DIMENSIONS, OUTPUTS, PACKED_OUTPUTS, PARAM_DIMENSIONS, PARAM_INPUT_TYPE,
    PARAM_TRUNCATE, TASKS, TEXT, ensemble_name)
from .validation import InvalidArgument, Options, check_dimensions, check_input_type, check_truncate


@dataclass(frozen=True)
class Request:
    task: str
    options: Options
    output: str

    @property
    def model(self) -> str:
        return ensemble_name(self.task)

    @property
    def tensor(self) -> str:
        return OUTPUTS[self.output]

    @property
    def parameters(self) -> dict:
        return {PARAM_INPUT_TYPE: self.options.input_type, PARAM_DIMENSIONS: self.options.dimensions,
                PARAM_TRUNCATE: self.options.truncate}


def check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise InvalidArgument(TEXT, "must be a list of strings")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgument(f"{TEXT}[{index}]", "must be a UTF-8 string")
        if not text:
            raise InvalidArgument(f"{TEXT}[{index}]", "is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"{TEXT}[{index}]", "is not valid UTF-8") from None
    return texts


def check_request(texts, task: str, input_type: str = DEFAULT_INPUT_TYPE, dimensions: int = MAX_DIMENSIONS,
                  output: str = "float", truncate: str = DEFAULT_TRUNCATE) -> tuple[list[str], Request]:
    """The server's rules, applied before anything is sent."""
    texts = check_texts(texts)
    if task not in TASKS:
        raise InvalidArgument("task", f"must be one of {', '.join(repr(t) for t in TASKS)}")
    if output not in OUTPUTS:
        raise InvalidArgument("output", f"must be one of {', '.join(repr(o) for o in OUTPUTS)}")
    options = Options(check_input_type(input_type), check_dimensions(dimensions), check_truncate(truncate))
    if output in PACKED_OUTPUTS and options.dimensions % 8:
        raise InvalidArgument(PARAM_DIMENSIONS, f"must be divisible by 8 for the packed output "
                              f"{output!r}, got {options.dimensions}")
    return texts, Request(task, options, output)
