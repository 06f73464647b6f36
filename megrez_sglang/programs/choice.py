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

from ..model.prompts import choice_prompt, option_letters
from . import chat_template  # noqa: F401  (the checkpoint's own chat format for SGLang's lookup)
from .answers import extract_choice, majority_answer
from .grammars import answer_json_regex
from .math import completion_tokens

ANSWER_MAX_TOKENS = 32
REASONING_MAX_TOKENS = 1024
# Stop free reasoning where the model starts writing the answer object itself: at its "answer"
# key, or at a JSON code block. The stops are short on purpose: SGLang looks for them in the last
# few tokens (the longest stop's own encoding plus one), so a long stop such as '{\n  "answer"'
# spelled in more tokens was missed in tests while the '"answer"' inside it matched. A brace the
# model opened before the key is then dropped (reasoning_before_the_answer_object) and the grammar
# writes the whole object: re-tokenized on its own, the brace is not the token the model writes
# there ('{"' is one token in Megrez-style vocabularies), and the letter would be forced from a
# state the model never saw (the trained tiny checkpoint answered at chance that way).
REASONING_STOPS = ['"answer"', "```json"]
_ANSWER_LETTER = re.compile(r'"answer": "([A-Z])"')


def opens_answer_object(reasoning: str) -> bool:
    """Whether the reasoning ends with the opening brace of the model's own answer object."""
    return reasoning.rstrip().endswith("{")


def reasoning_before_the_answer_object(reasoning: str) -> str:
    """The reasoning without the opening brace (and what follows it) of the model's own answer
    object, when it ends with one."""
    return reasoning.rstrip()[:-1] if opens_answer_object(reasoning) else reasoning


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
    if reasoning_max_tokens:
        _reason(s, reasoning_max_tokens, temperature, top_p)
    regex = answer_json_regex(option_letters(options)) if constrained else None
    s += sgl.gen("answer_json", max_tokens=ANSWER_MAX_TOKENS, temperature=temperature, top_p=top_p,
                 regex=regex)
    s += sgl.assistant_end()


def _reason(s, reasoning_max_tokens, temperature, top_p) -> None:
    """Free reasoning, generated in a copy of `s` (which shares its prefix in the radix cache) so
    that `s` continues with the reasoning up to, not into, the model's own answer object. Sets
    `s`'s variables "reasoning" and "reasoning_tokens"."""
    draft = s.fork(1)[0]
    draft += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, stop=REASONING_STOPS,
                     temperature=temperature, top_p=top_p)
    reasoning = reasoning_before_the_answer_object(draft["reasoning"])
    s.set_var("reasoning", reasoning)
    s.set_var("reasoning_tokens", draft.get_meta_info("reasoning")["completion_tokens"])
    s += reasoning


@sgl.function
def choice_self_consistency_program(s, question, options, k=8, lang="zh",
                                    reasoning_max_tokens=REASONING_MAX_TOKENS, temperature=0.7, top_p=0.9):
    s += sgl.user(choice_prompt(question, options, lang))
    s += sgl.assistant_begin()
    branches = s.fork(k)  # the prompt is prefilled once and reused from the radix cache
    if reasoning_max_tokens:  # every branch reasons at once (in a draft, see _reason), then answers
        drafts = [b.fork(1)[0] for b in branches]
        for d in drafts:
            d += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, stop=REASONING_STOPS,
                         temperature=temperature, top_p=top_p)
        for b, d in zip(branches, drafts, strict=True):
            reasoning = reasoning_before_the_answer_object(d["reasoning"])
            b.set_var("reasoning", reasoning)
            b += reasoning
    for b in branches:
        b += sgl.gen("answer_json", max_tokens=ANSWER_MAX_TOKENS, temperature=temperature,
                     top_p=top_p, regex=answer_json_regex(option_letters(options)))
    first = drafts if reasoning_max_tokens else branches
    name = "reasoning" if reasoning_max_tokens else "answer_json"
    s.set_var("branch_cached_tokens", [f.get_meta_info(name)["cached_tokens"] for f in first])
    branches.join()


def _result(state, options, constrained: bool) -> ChoiceResult:
    reasoning = state.get_var("reasoning") if "reasoning" in state.stream_executor.variables else ""
    answer_json = state["answer_json"]
    text = reasoning + answer_json
    # constrained: the grammar guarantees the object; otherwise read the whole reply as a grader does
    letter = answer_letter(answer_json) if constrained else extract_choice(text, option_letters(options))
    reasoning_tokens = state.stream_executor.variables.get("reasoning_tokens", 0)
    return ChoiceResult(letter, reasoning, text, reasoning_tokens + completion_tokens(state, "answer_json"))


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
