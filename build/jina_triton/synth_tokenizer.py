"""A small byte-level BPE tokenizer with the real EuroBERT special tokens.

The real tokenizer.json (Llama-3 BPE, 128,256 ids) cannot be downloaded here.
This one keeps everything the serving path depends on: the Llama-3 pre-tokenizer
regex, byte-level BPE (trained on the shipped multilingual corpus, so its
vocabulary is small), the special tokens at their real ids 128000-128255, and
the real post-processing (EOS appended, no BOS, right padding).
"""
from __future__ import annotations

import json
from pathlib import Path

from .corpus import corpus_sentences

BOS, EOS, MASK, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|mask|>", "<|pad|>"
FIRST_SPECIAL_ID = 128000
VOCAB_SIZE = 128256
SPECIAL_TOKENS = [BOS, EOS, MASK, "<|parallel_sep|>", PAD] + [
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + VOCAB_SIZE - FIRST_SPECIAL_ID - 5)]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def special_id(token: str) -> int:
    return FIRST_SPECIAL_ID + SPECIAL_TOKENS.index(token)


def _train_bpe(bpe_vocab_size: int) -> dict:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus_sentences(), trainer)
    return json.loads(tokenizer.to_str())


def _eos_template() -> dict:
    eos = {"SpecialToken": {"id": EOS, "type_id": 0}}
    return {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, eos],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, eos,
                 {"Sequence": {"id": "B", "type_id": 1}}, eos],
        "special_tokens": {EOS: {"id": EOS, "ids": [special_id(EOS)], "tokens": [EOS]}},
    }


def write_tokenizer(out: Path, bpe_vocab_size: int = 8000) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out`."""
    spec = _train_bpe(bpe_vocab_size)
    added = []
    for offset, token in enumerate(SPECIAL_TOKENS):
        token_id = FIRST_SPECIAL_ID + offset
        # in the model vocab too, so that the ids stay where the real model has them
        spec["model"]["vocab"][token] = token_id
        added.append({"id": token_id, "content": token, "single_word": False,
                      "lstrip": token == MASK, "rstrip": False, "normalized": False, "special": True})
    spec["added_tokens"] = added
    spec["post_processor"] = _eos_template()
    spec["truncation"] = None
    spec["padding"] = None
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))

    special_map = {"bos_token": BOS, "eos_token": EOS, "mask_token": MASK, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    decoder = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                  "single_word", "special")} for t in added}
    config = {"added_tokens_decoder": decoder, **special_map,
              "clean_up_tokenization_spaces": False, "model_max_length": 1e30,
              "model_input_names": ["input_ids", "attention_mask"],
              "tokenizer_class": "PreTrainedTokenizer"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
