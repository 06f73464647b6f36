"""Multiple choice: reasoning within a budget, then the answer forced to ``{"answer": "<L>"}``.

The prompt is the card's (prompts/choice.*: question, lettered options, and "show your choice in
the answer field ... e.g. "answer": "C""). As the card's MMLU-Pro and C-Eval figures were
measured with reasoning, the model first writes freely (at most `reasoning_max_tokens`, default
REASONING_MAX_TOKENS); the reasoning stops where the model starts its own answer object (or a JSON
code block), and the object is then generated under the grammar, L one of the item's own letters.
``reasoning_max_tokens=0`` asks for the answer object directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sglang as sgl

from ..answers import extract_choice, majority_answer
from ..prompts import choice_prompt, option_letters
from . import chat_template  # noqa: F401  (the checkpoint's own chat format for SGLang's lookup)
from .grammars import answer_json_regex
from .math import completion_tokens

ANSWER_MAX_TOKENS = 32
REASONING_MAX_TOKENS = 1024
# Stop free reasoning where the model starts writing the answer object itself: at its "answer"
# key, or at a JSON code block. A brace it opened before the key stays in the reasoning, and the
# grammar then writes the rest of the object (answer_json_regex(opened=True)). The stops are
# short on purpose: SGLang looks for them in the last few tokens (the longest stop's own encoding
# plus one), so a long stop such as '{\n  "answer"' spelled in more tokens was missed in tests
# while the '"answer"' inside it matched, leaving the brace behind anyway.
REASONING_STOPS = ['"answer"', "```json"]
_ANSWER_LETTER = re.compile(r'"answer": "([A-Z])"')


def opens_answer_object(reasoning: str) -> bool:
    """Whether the reasoning ends with the opening brace of the model's own answer object."""
    return reasoning.rstrip().endswith("{")


def answer_letter(answer_json: str) -> str:
    """The letter of an answer object generated under answer_json_regex (whole or opened)."""
    return _ANSWER_LETTER.search(answer_json).group(1)


@dataclass
class ChoiceResult:
    letter: str | None  # one of the item's letters; None when an unconstrained run gave none
    reasoning: str
    text: str
    completion_tokens: int = 0


@dataclass
class ChoiceVote:
    letter: str | None
    votes: int
    samples: list[ChoiceResult]
    branch_cached_tokens: list[int] = field(default_factory=list)


@sgl.function
def choice_program(s, question, options, lang="zh", reasoning_max_tokens=REASONING_MAX_TOKENS,
                   temperature=0.7, top_p=0.9, constrained=True):
    s += sgl.user(choice_prompt(question, options, lang))
    s += sgl.assistant_begin()
    opened = False
    if reasoning_max_tokens:
        s += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, stop=REASONING_STOPS,
                     temperature=temperature, top_p=top_p)
        opened = opens_answer_object(s["reasoning"])
    regex = answer_json_regex(option_letters(options), opened=opened) if constrained else None
    s += sgl.gen("answer_json", max_tokens=ANSWER_MAX_TOKENS, temperature=temperature, top_p=top_p,
                 regex=regex)
    s += sgl.assistant_end()


@sgl.function
def choice_self_consistency_program(s, question, options, k=8, lang="zh",
                                    reasoning_max_tokens=REASONING_MAX_TOKENS, temperature=0.7, top_p=0.9):
    s += sgl.user(choice_prompt(question, options, lang))
    s += sgl.assistant_begin()
    branches = s.fork(k)  # the prompt is prefilled once and reused from the radix cache
    if reasoning_max_tokens:  # every branch reasons at once, then each answers
        for b in branches:
            b += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, stop=REASONING_STOPS,
                         temperature=temperature, top_p=top_p)
    for b in branches:
        opened = bool(reasoning_max_tokens) and opens_answer_object(b["reasoning"])
        b += sgl.gen("answer_json", max_tokens=ANSWER_MAX_TOKENS, temperature=temperature,
                     top_p=top_p, regex=answer_json_regex(option_letters(options), opened=opened))
    first = "reasoning" if reasoning_max_tokens else "answer_json"
    s.set_var("branch_cached_tokens", [b.get_meta_info(first)["cached_tokens"] for b in branches])
    branches.join()


def _result(state, options, constrained: bool) -> ChoiceResult:
    reasoning = state.get_var("reasoning") if "reasoning" in state.stream_executor.variables else ""
    answer_json = state["answer_json"]
    text = reasoning + answer_json
    # constrained: the grammar guarantees the object; otherwise read the whole reply as a grader does
    letter = answer_letter(answer_json) if constrained else extract_choice(text, option_letters(options))
    return ChoiceResult(letter, reasoning, text, completion_tokens(state, "reasoning", "answer_json"))


def answer_choice(question: str, options, backend, *, constrained: bool = True, **params) -> ChoiceResult:
    """One item. `options`: texts (lettered A, B, ...) or {letter: text}. `params`: lang,
    reasoning_max_tokens (default REASONING_MAX_TOKENS; 0: the answer object directly),
    temperature, top_p."""
    state = choice_program.run(question=question, options=options, constrained=constrained,
                               backend=backend, **params)
    return _result(state, options, constrained)


def answer_choice_batch(items: list[tuple[str, object]], backend, *, constrained: bool = True,
                        num_threads: int | str = "auto", progress_bar: bool = True,
                        **params) -> list[ChoiceResult]:
    states = choice_program.run_batch(
        [dict(question=q, options=o, constrained=constrained, **params) for q, o in items],
        backend=backend, num_threads=num_threads, progress_bar=progress_bar)
    return [_result(s, o, constrained) for s, (_, o) in zip(states, items, strict=True)]


def answer_choice_self_consistent(question: str, options, backend, *, k: int = 8, **params) -> ChoiceVote:
    """k samples sharing the prompt prefix, each reasoning then answering as answer_choice does;
    the majority letter."""
    state = choice_self_consistency_program.run(question=question, options=options, k=k,
                                                backend=backend, **params)
    reasonings = state["reasoning"] if "reasoning" in state.stream_executor.variables else [""] * k
    samples = [ChoiceResult(answer_letter(a), r, r + a)
               for r, a in zip(reasonings, state["answer_json"], strict=True)]
    letter, votes = majority_answer([c.letter for c in samples])
    return ChoiceVote(letter, votes, samples, state["branch_cached_tokens"])
