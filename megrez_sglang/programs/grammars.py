"""The constraints that enforce the card's output formats, for SGLang's grammar backends.

* math: the final answer as ``\\boxed{...}`` - balanced braces (nested at most two deep, as in
  ``\\frac{\\sqrt{3}}{2}``), no newline, a bounded number of characters;
* multiple choice: exactly ``{"answer": "<L>"}`` where L can only be one of the item's letters.

Regexes work with every backend (xgrammar, outlines, llguidance); the EBNF forms need xgrammar
or llguidance: outlines compiles no EBNF, and asking for it is a clear error here.
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
_GROUP2 = r"\{" + _CHAR + r"{0,8}\}"
_GROUP1 = r"\{(?:" + _CHAR + "|" + _GROUP2 + r"){0,8}\}"
# The answer inside the box: 1-24 characters or brace groups (bounds keep it finite).
BOXED_CONTENT_REGEX = r"(?:" + _CHAR + "|" + _GROUP1 + r"){1,24}"
BOXED_REGEX = r"\\boxed\{" + BOXED_CONTENT_REGEX + r"\}"
# Generous: the regex bounds the characters, this bounds the tokens that spell them.
BOXED_MAX_TOKENS = 256

# The same language as BOXED_REGEX, as a grammar (for SGLang's native API: sampling_params "ebnf").
BOXED_EBNF = r'''root ::= "\\boxed{" item{1,24} "}"
item ::= char | "{" inner{0,8} "}"
inner ::= char | "{" char{0,8} "}"
char ::= [^{}\x00-\x1f]
'''


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


def answer_json_regex(letters) -> str:
    """``{"answer": "<L>"}`` with L one of `letters`."""
    return r'\{"answer": "(?:' + "|".join(_letters(letters)) + r')"\}'


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
