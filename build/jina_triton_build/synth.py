"""Write a SYNTHETIC checkpoint: the official file layout, seeded random weights.

Architecture-identical to jina-embeddings-v5-text-nano (preset `full`) or a
smaller one for tests (preset `tiny`), loadable by `checkpoint.open_checkpoint`
exactly like the real download. Its embeddings are meaningless; config.json
carries a `jina_triton_synthetic` block and everything downstream shows it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from jina_triton_client.contract import MODEL_REPO_ID, TASKS

from .checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTERS_DIR, LORA_TARGETS, SYNTHETIC_KEY
from .synth_tokenizer import BOS, EOS, MASK, VOCAB_SIZE, special_id, write_tokenizer

DEFAULT_TOKENIZER = {"full": "real", "tiny": "real"}  # "small": a BPE trained on the shipped corpus

# the released config.json, verbatim where it matters
BASE_CONFIG = {
    "architectures": ["JinaEmbeddingsV5Model"],
    "auto_map": {"AutoConfig": "configuration_jina_embeddings_v5.JinaEmbeddingsV5Config",
                 "AutoModel": "modeling_jina_embeddings_v5.JinaEmbeddingsV5Model"},
    "model_type": "jina_embeddings_v5",
    "task_names": list(TASKS),
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "rms_norm_eps": 1e-05,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "bos_token": BOS, "bos_token_id": special_id(BOS),
    "eos_token": EOS, "eos_token_id": special_id(EOS),
    "pad_token": EOS, "pad_token_id": special_id(EOS),
    "mask_token": MASK, "mask_token_id": special_id(MASK),
    "torch_dtype": "float32",
    "transformers_version": "4.40.0.dev0",
    "is_decoder": False,
}

# `tiny` keeps the real vocabulary, special ids and width (so every Matryoshka
# dimension up to 768 exists) but has 2 thin layers: ~108M params, most of them
# the embedding table.
PRESETS = {
    "full": {},
    "tiny": {"num_hidden_layers": 2, "intermediate_size": 1024},
}
LORA_RANK = 32
LORA_ALPHA = 32
LORA_DROPOUT = {"classification": 0.05}
INIT_STD = 0.02
LORA_B_STD = 0.02  # peft's "gaussian" init leaves B = 0; non-zero B makes adapters differ


def synthetic_config(preset: str, seed: int) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = {**BASE_CONFIG, **PRESETS[preset]}
    config[SYNTHETIC_KEY] = {
        "preset": preset, "seed": seed,
        "note": "SYNTHETIC: random weights in the official layout; embeddings are meaningless",
    }
    return config


def _backbone_state(config: dict, generator) -> dict:
    import torch

    from .checkpoint import Checkpoint, expected_backbone_shapes

    # the same shapes the loader validates against
    shapes = expected_backbone_shapes(Checkpoint(path=Path("."), config=config))
    state = {}
    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            state[key] = torch.ones(shape)
        else:
            state[key] = torch.randn(shape, generator=generator) * INIT_STD
    state["embed_tokens.weight"][config["pad_token_id"]] = 0.0  # nn.Embedding padding_idx
    return {key: value.to(torch.bfloat16).contiguous() for key, value in state.items()}


def _adapter_state(config: dict, generator) -> dict:
    import torch

    from .checkpoint import lora_shapes

    state = {}
    for key, shape in lora_shapes(config, LORA_RANK).items():
        std = 1.0 / LORA_RANK if ".lora_A." in key else LORA_B_STD
        state[key] = (torch.randn(shape, generator=generator) * std).to(torch.bfloat16).contiguous()
    return state


def _adapter_config(task: str) -> dict:
    return {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": MODEL_REPO_ID,
        "bias": "none", "corda_config": None, "eva_config": None, "exclude_modules": None,
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": "gaussian",
        "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
        "loftq_config": {}, "lora_alpha": LORA_ALPHA, "lora_bias": False,
        "lora_dropout": LORA_DROPOUT.get(task, 0.1), "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA",
        "r": LORA_RANK, "rank_pattern": {}, "revision": None,
        "target_modules": list(LORA_TARGETS), "task_type": "FEATURE_EXTRACTION",
        "trainable_token_indices": None, "use_dora": False, "use_rslora": False,
    }


def _sentence_transformers_files(out: Path) -> None:
    (out / "config_sentence_transformers.json").write_text(json.dumps({
        "__version__": {"sentence_transformers": "5.1.2", "transformers": "4.57.0", "pytorch": "2.8.0"},
        "prompts": {"query": "Query: ", "document": "Document: "},
        "default_prompt_name": "document", "similarity_fn_name": "cosine"}, indent=2))
    (out / "modules.json").write_text(json.dumps([{
        "idx": 0, "name": "transformer", "path": "", "type": "custom_st.Transformer",
        "kwargs": ["task", "truncate_dim"]}], indent=2))


def write_synthetic_checkpoint(out: Path, preset: str = "tiny", seed: int = 0,
                               progress=None, tokenizer: str | None = None) -> Path:
    """Write the checkpoint directory; returns its path. `progress(msg)` reports steps."""
    import torch
    from safetensors.torch import save_file

    report = progress or (lambda message: None)
    config = synthetic_config(preset, seed)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)

    report(f"backbone weights ({preset})")
    save_file(_backbone_state(config, generator), str(out / "model.safetensors"))
    for task in TASKS:
        report(f"adapter {task}")
        directory = out / ADAPTERS_DIR / task
        directory.mkdir(parents=True)
        (directory / ADAPTER_CONFIG).write_text(json.dumps(_adapter_config(task), indent=2))
        save_file(_adapter_state(config, generator), str(directory / ADAPTER_WEIGHTS))
    tokenizer = tokenizer or DEFAULT_TOKENIZER[preset]
    report(f"tokenizer ({tokenizer})")
    config[SYNTHETIC_KEY]["tokenizer"] = write_tokenizer(out, tokenizer)
    _sentence_transformers_files(out)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "README.md").write_text(
        f"# SYNTHETIC checkpoint — not {MODEL_REPO_ID}\n\n"
        f"Random weights (preset `{preset}`, seed {seed}) in the official file layout, written by "
        f"`jina-triton synth`. Its embeddings are meaningless: use it only to test and benchmark "
        f"the serving code.\n")
    return out


def synthetic_checkpoint(folder: Path, preset: str, seed: int = 0, progress=None):
    """The synthetic checkpoint in `folder`, written first if it is not there (or broken)."""
    from .checkpoint import CheckpointError, open_checkpoint

    try:
        return open_checkpoint(folder)
    except CheckpointError:
        return open_checkpoint(write_synthetic_checkpoint(folder, preset, seed, progress=progress))
