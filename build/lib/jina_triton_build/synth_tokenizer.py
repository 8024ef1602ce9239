"""The tokenizer of a synthetic checkpoint, with the real EuroBERT special tokens and
post-processing (EOS appended, no BOS, right padding).

- `real`: the Llama-3 byte-level BPE that EuroBERT (and so the released model) uses:
  the 128,000 ranks from the `quicktok-v1` package (a build dependency only), converted
  offline to a Hugging Face tokenizer.json by the standard tiktoken-to-BPE conversion,
  with Llama-3's pre-tokenization pattern and byte-level decoding.
- `small`: a byte-level BPE trained on the shipped corpus (8,000 merges; a small file,
  for what needs one). Same special ids and post-processing.
- a path to a tokenizer.json: copied as it is (e.g. a `real` one made beforehand on a
  machine that has the package).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .corpus import corpus_sentences

BOS, EOS, MASK, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|mask|>", "<|pad|>"
FIRST_SPECIAL_ID = 128000
VOCAB_SIZE = 128256
SPECIAL_TOKENS = [BOS, EOS, MASK, "<|parallel_sep|>", PAD] + [
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + VOCAB_SIZE - FIRST_SPECIAL_ID - 5)]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
KINDS = ("real", "small")


def special_id(token: str) -> int:
    return FIRST_SPECIAL_ID + SPECIAL_TOKENS.index(token)


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])


def byte_symbols() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, as byte-level BPE vocabularies spell tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {b: chr(b) for b in printable}, 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return symbols


def bpe_from_ranks(ranks: dict[bytes, int]):
    """A `tokenizers` BPE model that tokenizes exactly as rank-based (tiktoken) BPE does.

    Merges are recovered from the ranks: every split of a token into two tokens, ordered
    by the rank of the token they make (ties by the parts' ranks). `ignore_merges` emits
    a piece that is itself a token directly, as tiktoken does; some tokens cannot be
    reached by merging their bytes (e.g. " việc"), so this is needed for equality.
    """
    from tokenizers import models

    symbols = byte_symbols()

    def spell(token: bytes) -> str:
        return "".join(symbols[b] for b in token)

    merges = []
    for token, rank in ranks.items():
        splits = sorted((ranks[token[:i]], ranks[token[i:]], i) for i in range(1, len(token))
                        if token[:i] in ranks and token[i:] in ranks)
        merges += [(rank, spell(token[:i]), spell(token[i:])) for _, _, i in splits]
    merges.sort(key=lambda merge: merge[0])  # stable: the splits of one token keep their order
    vocab = {spell(token): rank for token, rank in ranks.items()}
    return models.BPE(vocab, [(left, right) for _, left, right in merges], fuse_unk=False, ignore_merges=True)


def llama3_ranks() -> dict[bytes, int]:
    try:
        import quicktok
    except ImportError as exc:
        raise RuntimeError("the real vocabulary needs the quicktok-v1 package (pip install 'quicktok-v1==0.4.0', "
                           "a build dependency); or pass --tokenizer small or a tokenizer.json") from exc
    encoding = quicktok.get_encoding("llama3")
    return {encoding.decode_single_token_bytes(rank): rank for rank in range(FIRST_SPECIAL_ID)}


def _train_small(bpe_vocab_size: int = 8000):
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus_sentences(), trainer)
    return tokenizer


def _finish(tokenizer) -> dict:
    """Special tokens at their real ids, EOS appended, no truncation or padding."""
    from tokenizers import decoders, processors

    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B:1 {EOS}:1",
                                                             special_tokens=[(EOS, special_id(EOS))])
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    added = []
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = FIRST_SPECIAL_ID + offset  # in the model vocab too: ids stay where the real model has them
        added.append({"id": FIRST_SPECIAL_ID + offset, "content": token, "single_word": False,
                      "lstrip": token == MASK, "rstrip": False, "normalized": False, "special": True})
    spec["added_tokens"] = added
    spec["truncation"] = spec["padding"] = None
    return spec


def real_tokenizer_json() -> str:
    """The real tokenizer.json text, converted once per quicktok version and cached."""
    from tokenizers import Tokenizer

    from .cache import atomic_write_bytes, default_cache_dir

    try:
        from importlib.metadata import version
        key = version("quicktok-v1")
    except Exception:  # noqa: BLE001 - not installed: llama3_ranks says what to do
        return json.dumps(_finish(Tokenizer(bpe_from_ranks(llama3_ranks()))), ensure_ascii=False)
    cached = default_cache_dir() / "tokenizers" / f"llama3-quicktok-{key}.json"
    if cached.is_file():
        return cached.read_text()
    text = json.dumps(_finish(Tokenizer(bpe_from_ranks(llama3_ranks()))), ensure_ascii=False)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cached, text.encode())
    return text


def write_tokenizer(out: Path, kind: str = "real") -> str:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out`; returns a label."""
    if kind not in KINDS:
        source = Path(kind)
        if not source.is_file():
            raise ValueError(f"tokenizer must be one of {', '.join(KINDS)} or a tokenizer.json file, not {kind!r}")
        shutil.copyfile(source, out / "tokenizer.json")
        label = "real" if json.loads(source.read_text())["model"].get("ignore_merges") else f"from {source.name}"
    else:
        text = real_tokenizer_json() if kind == "real" else json.dumps(_finish(_train_small()), ensure_ascii=False)
        (out / "tokenizer.json").write_text(text)
        label = kind
    special_map = {"bos_token": BOS, "eos_token": EOS, "mask_token": MASK, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    decoder = {str(FIRST_SPECIAL_ID + i): {"content": token, "lstrip": token == MASK, "normalized": False,
                                           "rstrip": False, "single_word": False, "special": True}
               for i, token in enumerate(SPECIAL_TOKENS)}
    config = {"added_tokens_decoder": decoder, **special_map,
              "clean_up_tokenization_spaces": False, "model_max_length": 1e30,
              "model_input_names": ["input_ids", "attention_mask"],
              "tokenizer_class": "PreTrainedTokenizer"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {"real": "real (Llama-3 vocabulary, 128,256 ids)", "small": "small (BPE trained on the shipped corpus)"}.get(
        label, label)
