"""Math: free reasoning within a budget, then the final answer forced into ``\\boxed{...}``.

The prompt is the card's (prompts/math.*: the question and "put your final answer within
\\boxed{}"). Reasoning stops at the model's own ``\\boxed`` or at the budget; the box is then
generated under BOXED_REGEX, so the result always has one well-formed final answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sglang as sgl

from ..model.prompts import math_prompt
from . import chat_template  # noqa: F401  (the checkpoint's own chat format for SGLang's lookup)
from .answers import last_boxed, majority_answer, math_equivalent
from .grammars import BOXED_MAX_TOKENS, BOXED_REGEX


@dataclass
class MathResult:
    reasoning: str
    answer: str | None  # inside the box; None when an unconstrained run boxed nothing
    text: str  # the assistant's whole reply
    completion_tokens: int = 0


@dataclass
class MathVote:
    answer: str | None
    votes: int
    samples: list[MathResult]
    branch_cached_tokens: list[int] = field(default_factory=list)


@sgl.function
def math_program(s, question, lang="zh", reasoning_max_tokens=512, temperature=0.7, top_p=0.9,
                 constrained=True):
    s += sgl.user(math_prompt(question, lang))
    s += sgl.assistant_begin()
    if constrained:
        s += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, stop=["\\boxed"],
                     temperature=temperature, top_p=top_p)
        s += sgl.gen("boxed", max_tokens=BOXED_MAX_TOKENS, regex=BOXED_REGEX,
                     temperature=temperature, top_p=top_p)
    else:
        s += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, temperature=temperature, top_p=top_p)
    s += sgl.assistant_end()


@sgl.function
def math_self_consistency_program(s, question, k=8, lang="zh", reasoning_max_tokens=512,
                                  temperature=0.7, top_p=0.9):
    s += sgl.user(math_prompt(question, lang))
    s += sgl.assistant_begin()
    # The k branches share the prompt: the fork prefills it once, every branch reuses it from the
    # radix cache.
    branches = s.fork(k)
    for b in branches:
        b += sgl.gen("reasoning", max_tokens=reasoning_max_tokens, stop=["\\boxed"],
                     temperature=temperature, top_p=top_p)
        b += sgl.gen("boxed", max_tokens=BOXED_MAX_TOKENS, regex=BOXED_REGEX,
                     temperature=temperature, top_p=top_p)
    s.set_var("branch_cached_tokens", [b.get_meta_info("reasoning")["cached_tokens"] for b in branches])
    branches.join()


def box_content(box: str) -> str | None:
    """The answer in a box generated under the grammar: everything between ``\\boxed{`` and the
    final brace (the grammar keeps the braces balanced; the text inside may itself say "\\boxed",
    which last_boxed would take for another box). A cut-off box: last_boxed's reading."""
    if box.startswith("\\boxed{") and box.endswith("}"):
        inner, depth = box[len("\\boxed{"):-1], 0
        for ch in inner:
            depth += (ch == "{") - (ch == "}")
            if depth < 0:
                break
        else:
            if depth == 0:
                return inner
    return last_boxed(box)


def completion_tokens(state, *names) -> int:
    """The tokens the program generated for the gen() calls `names` (those that ran)."""
    meta = state.stream_executor.meta_info
    return sum(meta[n]["completion_tokens"] for n in names if n in meta)


def _result(state, constrained: bool) -> MathResult:
    reasoning = state["reasoning"]
    if constrained:
        return MathResult(reasoning, box_content(state["boxed"]), reasoning + state["boxed"],
                          completion_tokens(state, "reasoning", "boxed"))
    return MathResult(reasoning, last_boxed(reasoning), reasoning, completion_tokens(state, "reasoning"))


def solve_math(question: str, backend, *, constrained: bool = True, **params) -> MathResult:
    """One question. `params`: lang, reasoning_max_tokens, temperature, top_p."""
    state = math_program.run(question=question, constrained=constrained, backend=backend, **params)
    return _result(state, constrained)


def solve_math_batch(questions: list[str], backend, *, constrained: bool = True,
                     num_threads: int | str = "auto", progress_bar: bool = True,
                     **params) -> list[MathResult]:
    states = math_program.run_batch(
        [dict(question=q, constrained=constrained, **params) for q in questions],
        backend=backend, num_threads=num_threads, progress_bar=progress_bar)
    return [_result(s, constrained) for s in states]


def solve_math_self_consistent(question: str, backend, *, k: int = 8, **params) -> MathVote:
    """k samples sharing the prompt prefix; the majority answer, compared by math-verify."""
    state = math_self_consistency_program.run(question=question, k=k, backend=backend, **params)
    samples = [MathResult(r, box_content(b), r + b)
               for r, b in zip(state["reasoning"], state["boxed"], strict=True)]
    answer, votes = majority_answer([m.answer for m in samples], equivalent=math_equivalent)
    return MathVote(answer, votes, samples, state["branch_cached_tokens"])
