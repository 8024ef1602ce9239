"""Config templates render strictly, every rendered config parses as a Triton ModelConfig, and
its tensor and model names are the contract's and the internals' constants."""
from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from jina_triton_build.options import BuildOptions, add_build_arguments, options_from_arguments
from jina_triton_build.render import TemplateError, placeholders, render
from jina_triton_client import contract
from jina_triton_models import templates_dir
from jina_triton_pipeline import internals


def test_render_fills_placeholders():
    assert render("a: ${x} b: ${y}", {"x": 1, "y": "two"}) == "a: 1 b: two"
    assert placeholders("${a} ${b} ${a}") == {"a", "b"}


def test_missing_value_is_an_error():
    with pytest.raises(TemplateError, match="no value for placeholder.*: y"):
        render("${x} ${y}", {"x": 1})


def test_unused_value_is_an_error():
    with pytest.raises(TemplateError, match="value.*for no placeholder: z"):
        render("${x}", {"x": 1, "z": 2})


def test_malformed_placeholder_is_an_error():
    with pytest.raises(TemplateError, match="malformed"):
        render("$x ${y}", {"y": 1})
    with pytest.raises(TemplateError, match="malformed"):
        render("${y} $", {"y": 1})


def test_a_value_may_hold_a_dollar():
    """Triton's own variable, in the packed environment's path, passes through as it is."""
    path = "$$TRITON_MODEL_DIRECTORY/../python_env.tar.gz"
    assert render('env: "${env}"', {"env": path}) == f'env: "{path}"'


TEMPLATES = ("preprocess", "encoder_onnx", "encoder_torch", "encoder_tensorrt", "postprocess", "ensemble")


def test_every_model_folder_has_a_template():
    assert {p.parent.name for p in templates_dir().glob("*/config.pbtxt.tmpl")} == set(TEMPLATES)


def test_each_option_is_rendered_by_the_templates_it_names():
    """Declared once: an option's templates hold its placeholder, and no template holds an undeclared one."""
    import argparse
    from dataclasses import fields

    declared = {}
    for spec in fields(BuildOptions):
        for template in spec.metadata["templates"]:
            assert template in TEMPLATES, (spec.name, template)
            assert spec.name in placeholders((templates_dir() / template / "config.pbtxt.tmpl").read_text())
            declared.setdefault(template, set()).add(spec.name)
    option_names = {spec.name for spec in fields(BuildOptions)}
    for template in TEMPLATES:
        used = placeholders((templates_dir() / template / "config.pbtxt.tmpl").read_text()) & option_names
        assert used == declared.get(template, set()), template
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    args = parser.parse_args(["--max-length", "128", "--target", "cuda"])
    assert options_from_arguments(args) == BuildOptions(max_length=128, target="cuda")


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_built_configs_parse(tiny_repository):
    configs = {path.parent.name: _parse(path) for path in tiny_repository.glob("*/config.pbtxt")}
    models = {internals.PREPROCESS_MODEL, internals.POSTPROCESS_MODEL}
    models |= {name(task) for task in contract.TASKS for name in (internals.encoder_name, contract.ensemble_name)}
    assert set(configs) == models
    encoder = configs["encoder_retrieval"]
    assert encoder.max_batch_size == 64 and encoder.dynamic_batching.max_queue_delay_microseconds == 0
    assert encoder.parameters["fixed_threads"].string_value == "False"
    assert all(tensor.allow_ragged_batch for tensor in encoder.input)
    assert encoder.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert configs["preprocess"].parameters["max_length"].string_value == "64"


def _names(config) -> set[str]:
    return {t.name for t in config.input} | {t.name for t in config.output}


def test_every_config_names_only_contract_and_internal_tensors(tiny_repository, cuda_repository, tensorrt_repository):
    """The GPU configs are never served here: this is what keeps their names honest."""
    public = {contract.TEXT, contract.TOKEN_COUNT, contract.TIMINGS, *contract.OUTPUTS.values()}
    internal = {internals.INPUT_IDS, internals.ATTENTION_MASK, internals.POOLED_STATE, internals.TOKENIZE_US,
                internals.ENCODE_US}
    models = {internals.PREPROCESS_MODEL, internals.POSTPROCESS_MODEL,
              *(internals.encoder_name(t) for t in contract.TASKS)}
    paths = [p for repo in (tiny_repository, cuda_repository, tensorrt_repository)
             for p in list(repo.glob("*/config.pbtxt")) + list(repo.glob("*/configs/*.pbtxt"))]
    assert len(paths) == 10 * 3 + 9
    for path in paths:
        config = _parse(path)
        if config.platform == "ensemble":
            assert _names(config) == public, path
            steps = config.ensemble_scheduling.step
            assert {s.model_name for s in steps} <= models
            for step in steps:
                assert set(step.input_map) | set(step.output_map) <= public | internal, path
                assert set(step.output_map.values()) <= public | {"_" + n for n in internal | {contract.TOKEN_COUNT}}
        else:
            assert _names(config) <= public | internal, path



def test_instance_counts_and_batching_follow_the_target_and_the_machine():
    from jina_triton_build.options import BuildOptions

    gpu = BuildOptions(target="cuda").resolved(cores=16)
    assert (gpu.preprocess_instances, gpu.postprocess_instances, gpu.encoder_instances) == (12, 4, 1)
    assert (gpu.encoder_max_rows, gpu.token_budget, gpu.max_padding) == (1024, 32768, 1.25)
    assert (gpu.queue_delay_us, gpu.preprocess_queue_delay_us) == (2000, 500)
    cpu = BuildOptions().resolved(cores=16)
    assert (cpu.preprocess_instances, cpu.postprocess_instances, cpu.encoder_instances) == (1, 1, 2)
    assert (cpu.encoder_max_rows, cpu.token_budget, cpu.max_padding) == (64, 512, 1.10)
    assert (cpu.queue_delay_us, cpu.preprocess_queue_delay_us, cpu.fixed_threads) == (0, 0, False)
    assert BuildOptions(queue_delay_us=300).resolved().queue_delay_us == 300
    assert BuildOptions(target="cuda", preprocess_instances=3).resolved(cores=64).preprocess_instances == 3
