"""The constraints that enforce the card's output formats, for SGLang's grammar backends.

* math: the final answer as ``\\boxed{...}``, on one line, braces balanced;
* multiple choice: exactly ``{"answer": "<L>"}`` where L can only be one of the item's letters.

The box must be able to spell every right answer: every MATH-500 and GSM8K gold answer (1,819)
written as ``\\boxed{<answer>}`` matches both forms below (tests/test_boxed_constraint.py checks
it with each backend's own compiler).

* ``BOXED_EBNF`` (xgrammar, llguidance): recursive, balanced braces at any depth; the top level
  as BOXED_REGEX's, each group at most BOXED_GROUP_GROUPS groups and runs of at most
  BOXED_GROUP_RUN characters.
* ``BOXED_REGEX`` (every backend; the only form SGLang's frontend language can send, and the only
  one outlines compiles): a finite regex. Outlines turns a regex into a DFA and then walks every
  vocabulary token from every state, so the DFA must stay small; counting items at every nesting
  level multiplies the counters (the former 24 x 8 x 8 form: ~2,000 states, 33 s to compile with
  a 4k vocabulary; a 64 x 16 x 4 form did not finish in 7 minutes). This one counts brace GROUPS
  at each level and bounds the runs of characters between them, so the counters add up instead:
  up to BOXED_TOP_GROUPS groups at the top with runs of up to BOXED_TOP_RUN characters, each group
  holding up to 2 groups with runs of up to 16, nesting 3 deep (~740 DFA states, ~4 s). The gold
  answers need at most 4 top-level groups, runs of 47, 14 characters in a group, depth 2.

Both allow no newline or other control character. BOXED_REGEX bounds the answer at
BOXED_MAX_CHARS characters, so a request with BOXED_MAX_TOKENS new tokens always ends with the
box closed (a token is at least one character). BOXED_EBNF's recursion bounds every level, not
the depth: a box nested past the request's budget is cut off (random weights did so in about 1
box in 40; the deepest gold answer is 2 groups deep).
"""

from __future__ import annotations

import json
import re

GRAMMAR_BACKENDS = ("xgrammar", "outlines", "llguidance")
# What each of SGLang's grammar backends compiles (sglang/srt/constrained/*).
BACKEND_SUPPORTS = {
    "xgrammar": {"regex", "json_schema", "ebnf"},
    "outlines": {"regex", "json_schema"},
    "llguidance": {"regex", "json_schema", "ebnf"},
}

_CHAR = r"[^{}\x00-\x1f]"  # no braces, no newline or other control character


def _run(n: int) -> str:
    return _CHAR + f"{{0,{n}}}"


def _group(run: int, subgroups: int, inner: tuple[str, int] | None) -> tuple[str, int]:
    """A brace group: runs of up to `run` characters around up to `subgroups` groups `inner`;
    its regex and its longest length."""
    if inner is None:
        return r"\{" + _run(run) + r"\}", run + 2
    regex, length = inner
    return (r"\{" + _run(run) + "(?:" + regex + _run(run) + f"){{0,{subgroups}}}" + r"\}",
            2 + run + subgroups * (length + run))


BOXED_TOP_RUN, BOXED_TOP_GROUPS = 56, 5
BOXED_GROUP_RUN, BOXED_GROUP_GROUPS = 16, 2  # in a group: BOXED_REGEX's first level, any BOXED_EBNF group
_DEPTH3 = _group(4, 0, None)
_DEPTH2 = _group(8, 1, _DEPTH3)
_DEPTH1_REGEX, _DEPTH1_LENGTH = _group(BOXED_GROUP_RUN, BOXED_GROUP_GROUPS, _DEPTH2)
# The answer inside the box: a run or a group first (so it is not empty), then group-run pairs.
BOXED_CONTENT_REGEX = ("(?:" + _CHAR + f"{{1,{BOXED_TOP_RUN}}}|" + _DEPTH1_REGEX + _run(BOXED_TOP_RUN)
                       + ")(?:" + _DEPTH1_REGEX + _run(BOXED_TOP_RUN) + f"){{0,{BOXED_TOP_GROUPS - 1}}}")
BOXED_MAX_CHARS = BOXED_TOP_GROUPS * (_DEPTH1_LENGTH + BOXED_TOP_RUN)
BOXED_REGEX = r"\\boxed\{" + BOXED_CONTENT_REGEX + r"\}"
BOXED_MAX_TOKENS = BOXED_MAX_CHARS + len("\\boxed{}")

# Balanced braces at any depth (the recursion of `group`), for sampling_params "ebnf". The top
# level is BOXED_REGEX's (runs of up to BOXED_TOP_RUN characters around up to BOXED_TOP_GROUPS
# groups, never empty); every group holds runs of up to BOXED_GROUP_RUN characters around up to
# BOXED_GROUP_GROUPS groups, as BOXED_REGEX's first level does, at any depth. Small budgets per
# level keep a box short (with 96-character runs and 16 groups a level, random weights ran past
# BOXED_MAX_TOKENS). The runs are character-class repetitions, which XGrammar masks in one step:
# the former form, one `item` rule per character, cost it 1.0 ms a step against 0.05 ms
# (bench.structured_output: 0.85x the unconstrained decode rate).
BOXED_EBNF = rf'''root ::= "\\boxed{{" content "}}"
content ::= top_run1 top_more | group top_run top_more
top_more ::= (group top_run){{0,{BOXED_TOP_GROUPS - 1}}}
top_run ::= [^{{}}\x00-\x1f]{{0,{BOXED_TOP_RUN}}}
top_run1 ::= [^{{}}\x00-\x1f]{{1,{BOXED_TOP_RUN}}}
group ::= "{{" run more "}}"
more ::= (group run){{0,{BOXED_GROUP_GROUPS}}}
run ::= [^{{}}\x00-\x1f]{{0,{BOXED_GROUP_RUN}}}
'''


def boxed_constraint(grammar_backend: str | None) -> dict[str, str]:
    """The sampling parameter that forces the box on `grammar_backend` (SGLang's native API or
    the openai client's extra_body): the recursive EBNF where the backend compiles EBNF, else the
    finite regex (also for an unknown backend: every backend compiles it)."""
    if grammar_backend in BACKEND_SUPPORTS and "ebnf" in BACKEND_SUPPORTS[grammar_backend]:
        return {"ebnf": BOXED_EBNF}
    return {"regex": BOXED_REGEX}


class UnsupportedConstraint(ValueError):
    """The selected grammar backend cannot compile this kind of constraint."""


def require_support(backend: str, kind: str) -> None:
    if backend not in BACKEND_SUPPORTS:
        raise ValueError(f"unknown grammar backend {backend!r}; expected one of {GRAMMAR_BACKENDS}")
    if kind not in BACKEND_SUPPORTS[backend]:
        raise UnsupportedConstraint(
            f"the {backend} grammar backend cannot compile {kind} constraints "
            f"(it supports {sorted(BACKEND_SUPPORTS[backend])}); use a regex, or start the server "
            "with --grammar-backend xgrammar or llguidance"
        )


def _letters(letters) -> list[str]:
    letters = list(letters)
    if not letters or any(not re.fullmatch(r"[A-Z]", l) for l in letters):
        raise ValueError(f"option letters must be single capital letters, got {letters}")
    return letters


def answer_json_regex(letters, *, opened: bool = False) -> str:
    """``{"answer": "<L>"}`` with L one of `letters`; `opened`: the rest of it after an opening
    brace the model wrote itself (``"answer": "<L>"}``)."""
    return ("" if opened else r"\{") + r'"answer": "(?:' + "|".join(_letters(letters)) + r')"\}'


def answer_json_schema(letters) -> dict:
    """The same answer object as a JSON schema (for ``response_format``)."""
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": _letters(letters)}},
        "required": ["answer"],
        "additionalProperties": False,
    }


def answer_json_schema_str(letters) -> str:
    return json.dumps(answer_json_schema(letters))
