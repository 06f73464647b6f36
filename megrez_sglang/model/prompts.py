"""The prompt texts (instructions, templates, system prompt) live as data files in prompts/."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

# The texts: the repository's prompts/ folder, which the package reaches through its prompt_texts
# link (and an installed package carries as package data); MEGREZ_PROMPTS_DIR points elsewhere
# (e.g. a translated set).
PROMPTS_DIR = Path(os.environ.get("MEGREZ_PROMPTS_DIR") or Path(__file__).parent / "prompt_texts")


@cache
def load_prompt(name: str) -> str:
    """The text of prompts/<name>.txt, without its final newline."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
        raise FileNotFoundError(f"no prompt {name!r}: {path} does not exist (known: {known})")
    return path.read_text(encoding="utf-8").removesuffix("\n")


LANGUAGES = ("zh", "en")
OPTION_LETTERS = "ABCDEFGHIJKLMNOP"


def _check_language(lang: str) -> None:
    # TypeError (not ValueError) for a non-string: SGLang's program tracer calls the programs
    # with placeholder arguments and stops cleanly on TypeError.
    if not isinstance(lang, str):
        raise TypeError(f"prompt language must be a string, got {type(lang).__name__}")
    if lang not in LANGUAGES:
        raise ValueError(f"unknown prompt language {lang!r}; expected one of {LANGUAGES}")


def math_prompt(question: str, lang: str = "zh") -> str:
    """A math question with the card's instruction to reason and box the final answer."""
    _check_language(lang)
    return load_prompt(f"math.{lang}").format(
        question=question.strip(), instruction=load_prompt(f"math_instruction.{lang}"))


def option_letters(options) -> list[str]:
    """The letters of a multiple-choice item: the keys of a {letter: text} mapping, or A, B, ...
    for a list of option texts."""
    if isinstance(options, dict):
        return list(options)
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"{len(options)} options: at most {len(OPTION_LETTERS)} are supported")
    return list(OPTION_LETTERS[: len(options)])


def choice_prompt(question: str, options, lang: str = "zh") -> str:
    """A multiple-choice question, its options one a line, and the card's answer-JSON instruction.
    `options`: a list of texts (lettered A, B, ...) or a {letter: text} mapping."""
    _check_language(lang)
    texts = list(options.values()) if isinstance(options, dict) else list(options)
    if len(texts) < 2:
        raise ValueError(f"a multiple-choice item needs at least 2 options, got {len(texts)}")
    lines = "\n".join(load_prompt("choice_option").format(letter=letter, text=str(text).strip())
                      for letter, text in zip(option_letters(options), texts, strict=True))
    return load_prompt(f"choice.{lang}").format(
        question=question.strip(), options=lines, instruction=load_prompt(f"choice_instruction.{lang}"))
