"""Tokenizers: the shipped tiny byte-level BPE and local Qwen2.5 tokenizers.

``load_tokenizer("tiny")`` loads ``model/assets/tiny_tokenizer``; any other argument is a local
directory holding a Hugging Face tokenizer (e.g. Qwen2.5). ``python -m model.tokenizer --out DIR``
regenerates the tiny tokenizer deterministically from the built-in corpus below.
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

TINY_VOCAB_SIZE = 1024
TINY_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # 0, pad
    "<|im_start|>",  # 1
    "<|im_end|>",  # 2, eos
    "<|vision_pad|>",  # 3
    "<|vision_start|>",  # 4
    "<|vision_end|>",  # 5
)
REQUIRED_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", "<|vision_pad|>")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_COLOURS = ("red", "green", "blue", "yellow", "white", "black", "grey", "gray", "orange", "purple",
            "cyan", "magenta", "pink", "brown")
_SHAPES = ("square", "circle", "triangle", "cross", "shape", "shapes", "object", "frame", "pattern", "flash", "stripe",
           "checkerboard", "background")
_VERBS = ("appear", "appears", "appeared", "leave", "leaves", "left", "move", "moves", "moving",
          "enter", "enters", "stay", "stays", "show", "shown", "shows", "visible", "see", "seen",
          "flash", "flashes", "is", "was", "are", "were", "does", "do", "did", "happen", "happens")
_FUNCTION_WORDS = ("a", "an", "the", "of", "at", "to", "from", "in", "on", "and", "then", "it",
                   "what", "which", "when", "where", "who", "how", "many", "seconds", "second",
                   "video", "image", "picture", "still", "frame", "colour", "color", "option",
                   "options", "answer", "with", "letter", "given", "choose", "correct", "single",
                   "there", "no", "yes", "one", "two", "three", "four", "describe", "briefly",
                   "left", "right", "top", "bottom", "center", "centre", "corner", "up", "down",
                   "across", "during", "between", "until", "for", "this", "that", "these", "by",
                   "user", "assistant", "system", "helpful", "You", "are", "Time", "Question",
                   "Options", "Answer", "only", "onto", "screen", "scene", "big", "small")


def _corpus_lines() -> list[str]:
    """Deterministic training corpus: chat scaffolding, timestamps, numbers and task vocabulary."""
    lines: list[str] = [
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n",
        "<|im_start|>user\n<image>\nDescribe the video.<|im_end|>\n<|im_start|>assistant\n",
        "user", "assistant", "system", "\n", "\n\n",
    ]
    for tenth in range(0, 6000, 5):
        lines.append(f"Time {tenth / 10:.1f}s:")
    for start, end in itertools.product(range(0, 120, 3), range(2, 130, 7)):
        lines.append(f"From {float(start):.1f} to {float(end):.1f} seconds.")
    for n in range(0, 1000):
        lines.append(str(n))
    for colour, shape in itertools.product(_COLOURS, _SHAPES):
        cap = colour.capitalize()
        lines += [
            f"A {colour} {shape} appears at 3 s and leaves at 9 s.",
            f"The {colour} {shape} moves from left to right.",
            f"{cap} {shape}.",
            f"What colour is the {shape}?",
            f"When does the {colour} {shape} appear?",
            f"Which shape is {colour}?",
            f"A {colour} {shape} on a {colour} background.",
        ]
    for letter, colour in zip("ABCD", _COLOURS, strict=False):
        lines += [f"{letter}. {colour}", f"{letter}.", f"({letter})", letter,
                  f"Answer with the option's letter from the given choices directly. {letter}"]
    lines += [" ".join(_VERBS), " ".join(_FUNCTION_WORDS), " ".join(_SHAPES), " ".join(_COLOURS),
              "Which shape appears in the video?", "What colour was the flash frame?",
              "What colour was the single flash frame shown in the video?",
              "Options:\nA. red\nB. green\nC. blue\nD. yellow",
              "Answer with the option's letter from the given choices directly.",
              "Give the start and end time in seconds.", "Describe the image briefly.",
              "Describe what happens in the video.", "Briefly describe the video.",
              "At 11 s the whole screen flashes cyan.", "Then a blue cross appears at 16 s and leaves at 24 s.",
              "For one second the whole screen shows a single colour. What colour is it?",
              "How many shapes appear in the video?", "Which shape appears first?",
              "What shape is the red object?", "What colour is the shape in the image?",
              "What shape is in the image?", "A yellow triangle.", "Green.", "A cross.",
              'When does the green circle appear in the video? Answer in the form "From <start> to <end> seconds."',
              'Give the query: "a person opens a door", when does the described content occur in the video?',
              "0123456789 .,:;?!'\"()[]{}-_/+*=%#&@"]
    return lines


def _corpus(repeats: int = 3) -> list[str]:
    """The corpus repeated so that frequent scaffolding pairs win merges deterministically."""
    return _corpus_lines() * repeats


def build_tiny_tokenizer(out_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE on the built-in corpus and save it (save_pretrained) to out_dir."""
    bpe = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    for idx, tok in enumerate(TINY_SPECIAL_TOKENS):
        if bpe.token_to_id(tok) != idx:
            raise RuntimeError(f"special token {tok} got id {bpe.token_to_id(tok)}, expected {idx}")
    if bpe.get_vocab_size() > TINY_VOCAB_SIZE:
        raise RuntimeError(f"tiny vocab has {bpe.get_vocab_size()} > {TINY_VOCAB_SIZE} tokens")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(TINY_SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tok.chat_template = CHATML_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return tok


def tiny_tokenizer_dir() -> Path:
    """Directory of the shipped tiny tokenizer assets."""
    return Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"


def load_tokenizer(path_or_name: str | os.PathLike, add_missing: bool = False) -> PreTrainedTokenizerFast:
    """Load ``"tiny"`` (shipped assets) or a local tokenizer directory (e.g. Qwen2.5).

    Checks that ``<|im_start|>``, ``<|im_end|>`` and ``<|vision_pad|>`` exist; when ``add_missing``
    they are added as special tokens instead (the model's embedding must then be resized).
    A missing chat template is set to ChatML; a missing pad token is set to ``<|endoftext|>``
    when present.

    Raises `model.checks.ModelFileError` (a ValueError, one line naming the directory) when the
    directory does not exist, holds no tokenizer files, its files do not load, or a required token is
    missing (without ``add_missing``).
    """
    from .checks import ModelFileError, check_tokenizer_files

    if str(path_or_name) == "tiny":
        path = tiny_tokenizer_dir()
    else:
        path = Path(path_or_name)
    if not path.is_dir():
        raise ModelFileError(path, "tokenizer directory does not exist")
    check_tokenizer_files(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # what tokenizers/transformers raise for unreadable files varies by file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelFileError(path, f"tokenizer files do not load ({type(exc).__name__}: {first})") from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ModelFileError(path, f"did not load a fast tokenizer ({type(tok).__name__})")
    vocab = tok.get_vocab()
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        if not add_missing:
            raise ModelFileError(path, f"tokenizer lacks required tokens {missing}")
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.pad_token is None and "<|endoftext|>" in vocab:
        tok.pad_token = "<|endoftext|>"
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
    return tok


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m model.tokenizer --out DIR`` regenerates the tiny tokenizer."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(tiny_tokenizer_dir()), help="output directory")
    args = parser.parse_args(argv)
    tok = build_tiny_tokenizer(args.out)
    print(f"wrote tiny tokenizer ({len(tok)} tokens) to {args.out}")


if __name__ == "__main__":
    main()
