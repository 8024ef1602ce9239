"""Checkpoint loading: the synthetic replica round-trips; malformed ones fail clearly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from jina_triton_build.checkpoint import (
    ADAPTERS_DIR, CheckpointError, expected_backbone_shapes, load_backbone, lora_shapes,
    open_checkpoint, Checkpoint)
from jina_triton_build.synth import synthetic_config
from jina_triton_client.contract import MODEL_REPO_ID, TASKS


def _count(shapes) -> int:
    total = 0
    for shape in shapes.values():
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def test_full_preset_has_the_real_parameter_counts(tmp_path):
    config = synthetic_config("full", seed=0)
    assert _count(expected_backbone_shapes(Checkpoint(tmp_path, config))) == 211_766_016
    assert _count(lora_shapes(config, 32)) == 6_782_976
    assert len(lora_shapes(config, 32)) == 168


def test_synthetic_checkpoint_round_trips(tiny_checkpoint, tiny_checkpoint_dir):
    assert tiny_checkpoint.tasks == TASKS
    assert tiny_checkpoint.synthetic and "SYNTHETIC" in tiny_checkpoint.label
    config = json.loads((tiny_checkpoint_dir / "config.json").read_text())
    assert config["model_type"] == "jina_embeddings_v5" and config["rope_theta"] == 1000000
    model = load_backbone(tiny_checkpoint)
    assert model.config.rope_parameters["rope_theta"] == 1e6
    assert sum(p.numel() for p in model.parameters()) == _count(expected_backbone_shapes(tiny_checkpoint))
    from safetensors import safe_open
    with safe_open(str(tiny_checkpoint_dir / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        assert "embed_tokens.weight" in keys and not any(k.startswith("model.") for k in keys)
        assert str(handle.get_slice("embed_tokens.weight").get_dtype()) == "BF16"
    for task in TASKS:
        adapter = json.loads((tiny_checkpoint_dir / ADAPTERS_DIR / task / "adapter_config.json").read_text())
        assert adapter["r"] == 32 and adapter["lora_alpha"] == 32


def test_synthesis_is_seeded(tmp_path, tiny_checkpoint_dir):
    from jina_triton_build.synth import write_synthetic_checkpoint

    again = write_synthetic_checkpoint(tmp_path / "again", preset="tiny", seed=7)
    assert open_checkpoint(again).fingerprint == open_checkpoint(tiny_checkpoint_dir).fingerprint


def _symlinked_copy(source, target):
    """Every file a symlink into `source`, as the HF cache lays a snapshot out."""
    shutil.copytree(source, target, copy_function=os.symlink)
    return target


def _replace_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.unlink()
    path.write_text(json.dumps(data))


def test_missing_adapter(tmp_path, tiny_checkpoint_dir):
    broken = _symlinked_copy(tiny_checkpoint_dir, tmp_path / "c")
    shutil.rmtree(broken / ADAPTERS_DIR / "clustering")
    with pytest.raises(CheckpointError, match="no adapter for task 'clustering'"):
        open_checkpoint(broken)


def test_wrong_adapter_shape(tmp_path, tiny_checkpoint_dir):
    import torch
    from safetensors.torch import load_file, save_file

    broken = _symlinked_copy(tiny_checkpoint_dir, tmp_path / "c")
    file = broken / ADAPTERS_DIR / "retrieval" / "adapter_model.safetensors"
    tensors = load_file(file)
    key = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(16, tensors[key].shape[1], dtype=torch.bfloat16)
    file.unlink()
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*q_proj\.lora_A\.weight is \[16, 768\], expected \[32, 768\]"):
        open_checkpoint(broken)


def test_wrong_backbone_shape(tmp_path, tiny_checkpoint_dir):
    broken = _symlinked_copy(tiny_checkpoint_dir, tmp_path / "c")
    _replace_json(broken / "config.json", intermediate_size=2048)
    with pytest.raises(CheckpointError, match="does not match config.json: wrong shapes"):
        open_checkpoint(broken)


def test_unknown_task_in_config(tmp_path, tiny_checkpoint_dir):
    broken = _symlinked_copy(tiny_checkpoint_dir, tmp_path / "c")
    _replace_json(broken / "config.json", task_names=list(TASKS) + ["summarization"])
    with pytest.raises(CheckpointError, match="unknown task 'summarization'"):
        open_checkpoint(broken)


def test_unknown_task_requested(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="unknown task 'rerank'; known tasks: retrieval"):
        tiny_checkpoint.adapter_dir("rerank")


def test_missing_tokenizer(tmp_path, tiny_checkpoint_dir):
    broken = _symlinked_copy(tiny_checkpoint_dir, tmp_path / "c")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        open_checkpoint(broken)


def test_missing_weights_and_config(tmp_path, tiny_checkpoint_dir):
    broken = _symlinked_copy(tiny_checkpoint_dir, tmp_path / "c")
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        open_checkpoint(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        open_checkpoint(broken)


def test_not_a_directory_nor_a_repo_id(tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        open_checkpoint(tmp_path / "nowhere" / "at" / "all")


def _open_offline(hf_home, source):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    code = ("import sys; from jina_triton_build.checkpoint import open_checkpoint, CheckpointError\n"
            "try:\n print(open_checkpoint(sys.argv[1]).path)\n"
            "except CheckpointError as e:\n print('ERROR', e); sys.exit(3)")
    return subprocess.run([sys.executable, "-c", code, source], env=env, capture_output=True, text=True)


def test_repo_id_offline_without_cache_says_what_to_do(tmp_path):
    result = _open_offline(tmp_path / "empty-hf-home", MODEL_REPO_ID)
    assert result.returncode == 3, result.stderr
    assert "could not get 'jinaai/jina-embeddings-v5-text-nano'" in result.stdout
    assert "huggingface-cli download" in result.stdout and "Traceback" not in result.stdout


def test_repo_id_resolves_through_the_hf_cache(tmp_path, tiny_checkpoint_dir):
    repo = tmp_path / "hf" / "hub" / ("models--" + MODEL_REPO_ID.replace("/", "--"))
    revision = "8a7f00aac812071b69403df470f1038ec85f8925"
    _symlinked_copy(tiny_checkpoint_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    result = _open_offline(tmp_path / "hf", MODEL_REPO_ID)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(revision)
