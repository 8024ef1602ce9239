"""The synthetic tokenizer keeps the real special tokens and post-processing; truncation rules."""
from __future__ import annotations

import pytest

from jina_triton_build.reference import TooLongError
from jina_triton_client.contract import PREFIXES


def test_special_tokens_have_the_real_ids(reference):
    tok = reference.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.mask_token_id, tok.pad_token_id) == (128000, 128001, 128002, 128004)
    assert tok.pad_token == "<|pad|>"
    assert tok.convert_ids_to_tokens(128255).startswith("<|reserved_special_token_")


def test_eos_appended_no_bos_right_padding(reference):
    batch = reference.tokenizer(["Query: hello world", "Document: a much longer text than the first one"],
                                padding=True)
    short, long = batch["input_ids"]
    assert 128000 not in short and 128000 not in long
    assert long[-1] == 128001
    n = sum(batch["attention_mask"][0])
    assert short[n - 1] == 128001 and set(short[n:]) == {128004}


@pytest.mark.parametrize("input_type", ["query", "document"])
def test_end_truncation_keeps_eos_last(reference, input_type):
    text = "word " * 200
    batch = reference.tokenize([text, "short"], input_type, "END", max_length=40)
    ids, mask = batch["input_ids"][0].tolist(), batch["attention_mask"][0].tolist()
    assert len(ids) == 40 and sum(mask) == 40 and ids[-1] == 128001
    full = reference.tokenizer(PREFIXES[input_type] + text, add_special_tokens=False)["input_ids"]
    assert ids[:-1] == full[:39]


def test_start_truncation_keeps_prefix_and_eos(reference):
    text = " ".join(f"w{i}" for i in range(300))
    ids = reference.tokenize([text], "query", "START", max_length=40)["input_ids"][0].tolist()
    full = reference.tokenizer(PREFIXES["query"] + text, add_special_tokens=False)["input_ids"]
    prefix = reference.tokenizer("Query:", add_special_tokens=False)["input_ids"]
    assert len(ids) == 40 and ids[-1] == 128001
    assert ids[:len(prefix)] == prefix
    assert ids[len(prefix):-1] == full[len(full) - (39 - len(prefix)):]


def test_none_refuses_long_text_and_accepts_short(reference):
    with pytest.raises(TooLongError):
        reference.tokenize(["word " * 200], "document", "NONE", max_length=40)
    short = reference.tokenize(["word " * 3], "document", "NONE", max_length=40)
    assert short["attention_mask"].sum() < 40
