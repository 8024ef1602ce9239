"""Find, validate and load a jina-embeddings-v5-text-nano checkpoint.

The official Hugging Face layout of jinaai/jina-embeddings-v5-text-nano:
  config.json                      model_type "jina_embeddings_v5", task_names
  model.safetensors                bare EuroBertModel weights, unprefixed, bf16
  adapters/<task>/adapter_config.json + adapter_model.safetensors   (LoRA)
  tokenizer.json, tokenizer_config.json, special_tokens_map.json

The repo's remote code is never executed: the backbone is the native
transformers `EuroBertModel`, built from the config, and the adapters are
attached with peft.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from jina_triton_client.contract import MODEL_REPO_ID, TASKS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTERS_DIR = "adapters"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SYNTHETIC_KEY = "jina_triton_synthetic"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# What a hub download needs: everything but the remote code we never run.
HUB_PATTERNS = ["*.json", "*.safetensors", "adapters/*/*"]


class CheckpointError(Exception):
    """A checkpoint is missing, unreachable or malformed; the message says what to do."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.config["task_names"])

    @property
    def synthetic(self) -> bool:
        return SYNTHETIC_KEY in self.config

    @property
    def label(self) -> str:
        if self.synthetic:
            preset = self.config[SYNTHETIC_KEY].get("preset", "?")
            return f"SYNTHETIC random-weight replica (preset {preset}); embeddings are meaningless"
        return f"{MODEL_REPO_ID} weights from {self.path}"

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    def adapter_dir(self, task: str) -> Path:
        check_task(task, self.tasks)
        return self.path / ADAPTERS_DIR / task

    def files(self) -> list[Path]:
        files = [self.path / CONFIG_FILE, self.path / WEIGHTS_FILE]
        files += [self.path / name for name in TOKENIZER_FILES]
        for task in self.tasks:
            files += [self.adapter_dir(task) / ADAPTER_CONFIG, self.adapter_dir(task) / ADAPTER_WEIGHTS]
        return files

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every file that shapes the embeddings."""
        digest = hashlib.sha256()
        for file in self.files():
            digest.update(file.relative_to(self.path).as_posix().encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        return digest.hexdigest()


def check_task(task: str, tasks: tuple[str, ...] = TASKS) -> str:
    if task not in tasks:
        raise CheckpointError(f"unknown task {task!r}; known tasks: {', '.join(tasks)}")
    return task


def resolve(source: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub repo id through the HF cache/hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(
            f"checkpoint {text!r} is not a directory. Pass a local checkpoint directory "
            f"or a Hugging Face repo id such as {MODEL_REPO_ID}.")
    return _from_hub(text)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise CheckpointError("huggingface_hub is not installed; pass a local directory") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, missing from the cache, gated, wrong id ...
        raise CheckpointError(
            f"could not get {repo_id!r} from the Hugging Face cache or hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
            f"On a machine with internet run `huggingface-cli download {repo_id}` and copy "
            f"the HF cache (HF_HOME) here, or download the repo to a directory and pass "
            f"that directory as the checkpoint.") from exc


def open_checkpoint(source: str | os.PathLike) -> Checkpoint:
    """Locate and validate a checkpoint's layout (cheap: reads headers, not weights)."""
    path = resolve(source)
    config = _read_json(path / CONFIG_FILE, "the model config")
    _check_config(config, path)
    checkpoint = Checkpoint(path=path, config=config)
    for name in TOKENIZER_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path} has no {name}: the tokenizer files "
                                  f"({', '.join(TOKENIZER_FILES)}) are part of the checkpoint")
    _check_backbone_shapes(checkpoint)
    for task in checkpoint.tasks:
        _check_adapter(checkpoint, task)
    return checkpoint


def _read_json(file: Path, what: str) -> dict:
    if not file.is_file():
        raise CheckpointError(f"{file.parent} has no {file.name} ({what}); "
                              f"is this a jina-embeddings-v5-text-nano checkpoint directory?")
    try:
        return json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from exc


def _check_config(config: dict, path: Path) -> None:
    if config.get("model_type") != "jina_embeddings_v5":
        raise CheckpointError(f"{path / CONFIG_FILE}: model_type is {config.get('model_type')!r}, "
                              f"expected 'jina_embeddings_v5'")
    names = config.get("task_names")
    if not isinstance(names, list) or not names:
        raise CheckpointError(f"{path / CONFIG_FILE}: task_names is missing or empty")
    for name in names:
        if name not in TASKS:
            raise CheckpointError(f"{path / CONFIG_FILE}: task_names lists unknown task {name!r}; "
                                  f"known tasks: {', '.join(TASKS)}")
    if config.get("rope_scaling"):
        raise CheckpointError(f"{path / CONFIG_FILE}: rope_scaling {config['rope_scaling']!r} "
                              f"is not supported (the released model has none)")


def backbone_config(checkpoint: Checkpoint):
    """The native EuroBertConfig equivalent to the checkpoint's config.json."""
    from transformers import EuroBertConfig

    config = checkpoint.config
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
            "rms_norm_eps", "attention_bias", "mlp_bias", "head_dim", "pad_token_id",
            "bos_token_id", "eos_token_id", "mask_token_id", "initializer_range")
    kwargs = {key: config[key] for key in keys if config.get(key) is not None}
    return EuroBertConfig(rope_parameters={"rope_type": "default", "rope_theta": rope_theta(config, checkpoint.path)},
                          **kwargs)


def rope_theta(config: dict, path: Path | None = None) -> float:
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")
    if theta is None:
        raise CheckpointError(f"{(path or Path('.')) / CONFIG_FILE} has no rope_theta")
    return float(theta)


def expected_backbone_shapes(checkpoint: Checkpoint) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import EuroBertModel

    with torch.device("meta"):
        model = EuroBertModel(backbone_config(checkpoint))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc


def _strip_prefix(key: str) -> str:
    return key[len("model."):] if key.startswith("model.") else key


def _compare_shapes(found: dict, expected: dict, where: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    if wrong:
        problems.append("wrong shapes: " + ", ".join(
            f"{k} is {list(found[k])}, expected {list(expected[k])}" for k in wrong[:3]))
    if problems:
        raise CheckpointError(f"{where} does not match config.json: " + "; ".join(problems))


def _check_backbone_shapes(checkpoint: Checkpoint) -> None:
    file = checkpoint.path / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(f"{checkpoint.path} has no {WEIGHTS_FILE} (the backbone weights)")
    found = {_strip_prefix(k): v for k, v in _header_shapes(file).items()}
    _compare_shapes(found, expected_backbone_shapes(checkpoint), file)


def lora_shapes(config: dict, rank: int) -> dict[str, tuple[int, ...]]:
    """Expected adapter tensors: peft keys -> shape, for every layer and target module."""
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    dims = {  # module -> (in_features, out_features)
        "self_attn.q_proj": (hidden, heads * head_dim), "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv), "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden)}
    shapes = {}
    for layer in range(int(config["num_hidden_layers"])):
        for module, (fan_in, fan_out) in dims.items():
            stem = f"base_model.model.layers.{layer}.{module}"
            shapes[f"{stem}.lora_A.weight"] = (rank, fan_in)
            shapes[f"{stem}.lora_B.weight"] = (fan_out, rank)
    return shapes


def adapter_config(checkpoint: Checkpoint, task: str) -> dict:
    directory = checkpoint.adapter_dir(task)
    if not directory.is_dir():
        raise CheckpointError(f"{checkpoint.path} has no adapter for task {task!r} "
                              f"(expected {ADAPTERS_DIR}/{task}/ with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    config = _read_json(directory / ADAPTER_CONFIG, f"the {task} adapter config")
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: peft_type is {config.get('peft_type')!r}, "
                              f"expected 'LORA'")
    if set(config.get("target_modules") or ()) != set(LORA_TARGETS):
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: target_modules must be {list(LORA_TARGETS)}")
    for flag in ("use_dora", "use_rslora"):
        if config.get(flag):
            raise CheckpointError(f"{directory / ADAPTER_CONFIG}: {flag} is not supported")
    return config


def _check_adapter(checkpoint: Checkpoint, task: str) -> None:
    config = adapter_config(checkpoint, task)
    file = checkpoint.adapter_dir(task) / ADAPTER_WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"adapter {task!r} has no {ADAPTER_WEIGHTS} in {file.parent}")
    _compare_shapes(_header_shapes(file), lora_shapes(checkpoint.config, int(config["r"])), file)


def load_backbone_state(checkpoint: Checkpoint, dtype=None) -> dict:
    """The backbone's weights by module name (bf16 upcast to fp32 by default)."""
    import torch
    from safetensors.torch import load_file

    dtype = dtype or torch.float32
    return {_strip_prefix(k): v.to(dtype) for k, v in load_file(checkpoint.path / WEIGHTS_FILE).items()}


def architecture(checkpoint: Checkpoint) -> dict:
    """What jina_triton_pipeline.eurobert needs to build the backbone."""
    config = checkpoint.config
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
            "rms_norm_eps")
    return {**{key: config[key] for key in keys}, "rope_theta": rope_theta(config, checkpoint.path)}


def load_backbone(checkpoint: Checkpoint, dtype=None):
    """The native EuroBertModel (transformers) with the checkpoint's weights: the reference's backbone."""
    import torch
    from transformers import EuroBertModel

    dtype = dtype or torch.float32
    model = EuroBertModel(backbone_config(checkpoint))
    model.load_state_dict(load_backbone_state(checkpoint, dtype), strict=True)
    return model.to(dtype).eval()


def load_lora(checkpoint: Checkpoint, task: str) -> tuple[dict, float]:
    """The adapter's tensors (fp32) and its scaling alpha/r."""
    import torch
    from safetensors.torch import load_file

    config = adapter_config(checkpoint, task)
    tensors = load_file(checkpoint.adapter_dir(task) / ADAPTER_WEIGHTS)
    return {k: v.to(torch.float32) for k, v in tensors.items()}, config["lora_alpha"] / config["r"]


def load_peft_model(checkpoint: Checkpoint):
    """Backbone + every adapter through peft, unmerged: the reference model."""
    from peft import PeftModel

    tasks = checkpoint.tasks
    model = PeftModel.from_pretrained(load_backbone(checkpoint), str(checkpoint.adapter_dir(tasks[0])),
                                      adapter_name=tasks[0])
    for task in tasks[1:]:
        model.load_adapter(str(checkpoint.adapter_dir(task)), adapter_name=task)
    return model.eval()
