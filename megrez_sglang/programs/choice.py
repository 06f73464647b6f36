"""Multiple choice: reasoning within a budget, then the answer forced to ``{"answer": "<L>"}``.

The prompt is the card's (prompts/choice.*: question, lettered options, and "show your choice in
the answer field ... e.g. "answer": "C""). As the card's MMLU-Pro and C-Eval figures were
measured with reasoning, the model first writes freely (at most `reasoning_max_tokens`, default
REASONING_MAX_TOKENS); the reasoning stops where the model starts its own answer object (or a JSON
code block), and the object is then generated under the grammar, L one of the item's own letters.
``reasoning_max_tokens=0`` asks for the answer object directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import sglang as sgl

from ..answers import extract_choice, majority_answer
from ..prompts import choice_prompt, option_letters
from . import chat_template  # noqa: F401  (the checkpoint's own chat format for SGLang's lookup)
from .grammars import answer_json_regex
from .math import completion_tokens

ANSWER_MAX_TOKENS = 32
REASONING_MAX_TOKENS = 1024
# Stop free reasoning where the model starts writing the answer object itself (longest first:
# SGLang trims the first stop string that matches, and '{"answer"' should take its brace along).
REASONING_STOPS = ['{\n  "answer"', '{\n"answer"', '{ "answer"', '{"answer"', "```json", '"answer"']


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
    if reasoning_max_tokens:
        s += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, stop=REASONING_STOPS,
                     temperature=temperature, top_p=top_p)
    s += sgl.gen("answer_json", max_tokens=ANSWER_MAX_TOKENS, temperature=temperature, top_p=top_p,
                 regex=answer_json_regex(option_letters(options)) if constrained else None)
    s += sgl.assistant_end()


@sgl.function
def choice_self_consistency_program(s, question, options, k=8, lang="zh",
                                    reasoning_max_tokens=REASONING_MAX_TOKENS, temperature=0.7, top_p=0.9):
    s += sgl.user(choice_prompt(question, options, lang))
    s += sgl.assistant_begin()
    branches = s.fork(k)  # the prompt is prefilled once and reused from the radix cache
    for b in branches:
        if reasoning_max_tokens:
            b += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, stop=REASONING_STOPS,
                         temperature=temperature, top_p=top_p)
        b += sgl.gen("answer_json", max_tokens=ANSWER_MAX_TOKENS, temperature=temperature,
                     top_p=top_p, regex=answer_json_regex(option_letters(options)))
    first = "reasoning" if reasoning_max_tokens else "answer_json"
    s.set_var("branch_cached_tokens", [b.get_meta_info(first)["cached_tokens"] for b in branches])
    branches.join()


def _letter(answer_json: str, letters: list[str], constrained: bool) -> str | None:
    if constrained:  # the grammar guarantees the object; parse it as JSON
        return json.loads(answer_json)["answer"]
    return extract_choice(answer_json, letters)


def _result(state, options, constrained: bool) -> ChoiceResult:
    reasoning = state.get_var("reasoning") if "reasoning" in state.stream_executor.variables else ""
    answer_json = state["answer_json"]
    return ChoiceResult(_letter(answer_json, option_letters(options), constrained), reasoning,
                        reasoning + answer_json, completion_tokens(state, "reasoning", "answer_json"))


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
    samples = [ChoiceResult(json.loads(a)["answer"], r, r + a)
               for r, a in zip(reasonings, state["answer_json"], strict=True)]
    letter, votes = majority_answer([c.letter for c in samples])
    return ChoiceVote(letter, votes, samples, state["branch_cached_tokens"])
