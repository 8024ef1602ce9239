"""Config templates render strictly and every rendered config parses as a Triton ModelConfig."""
from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from jina_triton.render import TemplateError, placeholders, render
from jina_triton.repository import templates_dir


def test_render_fills_placeholders():
    assert render("a: ${x} b: ${y}", {"x": 1, "y": "two"}) == "a: 1 b: two"
    assert placeholders("${a} ${b} ${a}") == {"a", "b"}


def test_missing_value_is_an_error():
    with pytest.raises(TemplateError, match="no value for placeholder.*: y"):
        render("${x} ${y}", {"x": 1})


def test_unused_value_is_an_error_unless_allowed():
    with pytest.raises(TemplateError, match="value.*for no placeholder: z"):
        render("${x}", {"x": 1, "z": 2})
    assert render("${x}", {"x": 1, "z": 2}, allow_unused=True) == "1"


def test_malformed_placeholder_is_an_error():
    with pytest.raises(TemplateError, match="malformed"):
        render("$x ${y}", {"y": 1})


def test_every_model_folder_has_a_template():
    for name in ("preprocess", "encoder", "postprocess", "ensemble"):
        assert (templates_dir() / name / "config.pbtxt.tmpl").is_file()


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_built_configs_parse(tiny_repository):
    configs = {path.parent.name: _parse(path) for path in tiny_repository.glob("*/config.pbtxt")}
    assert set(configs) == {"preprocess", "postprocess", "encoder_retrieval", "encoder_text_matching",
                            "encoder_clustering", "encoder_classification", "embed_retrieval",
                            "embed_text_matching", "embed_clustering", "embed_classification"}
    encoder = configs["encoder_retrieval"]
    assert encoder.max_batch_size == 64 and encoder.dynamic_batching.max_queue_delay_microseconds == 2000
    assert all(tensor.allow_ragged_batch for tensor in encoder.input)
    ensemble = configs["embed_retrieval"]
    assert [step.model_name for step in ensemble.ensemble_scheduling.step] == [
        "preprocess", "encoder_retrieval", "postprocess"]
    assert configs["preprocess"].parameters["max_length"].string_value == "64"
