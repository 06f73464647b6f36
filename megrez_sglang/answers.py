"""Reading answers out of free text, as graders do with unconstrained outputs.

* math: the LAST ``\\boxed{...}`` (nested braces), ``\\boxed 5``, ``\\fbox{...}``; equivalence is
  math-verify's (gold first: its ``verify`` is asymmetric);
* multiple choice: the answer JSON and its variants (full-width punctuation, curly quotes,
  「答案：C」, ``(C)``), always restricted to the item's own letters; never "the first capital
  letter" (which reads "P" out of "Please ...").
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata

# math-verify warns on every call made without its signal-based timeout (see _math_verify_timeout).
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOX_COMMANDS = re.compile(r"\\(?:boxed|fbox)")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``); None if
    there is none or the last one is unbalanced."""
    for match in reversed(list(_BOX_COMMANDS.finditer(text))):
        rest = text[match.end():]
        stripped = rest.lstrip(" ")
        if stripped.startswith("{"):
            depth = 0
            start = len(rest) - len(stripped)
            for i, ch in enumerate(rest[start:], start):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        return rest[start + 1 : i]
            continue  # unbalanced: look at an earlier box
        if rest.startswith(" ") and stripped:  # "\boxed 5" (LaTeX's argument without braces)
            return re.match(r"[^\s$]+", stripped).group(0).rstrip(".,;")
    return None


# Quotes and brackets that NFKC leaves alone but writers use for the same thing.
_QUOTES = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "「": '"', "」": '"',
                         "『": '"', "』": '"', "【": "[", "】": "]"})


def normalize_text(text: str) -> str:
    """NFKC (full-width letters, digits, colons and brackets become ASCII), then quotes."""
    return unicodedata.normalize("NFKC", text).translate(_QUOTES)


def _letter_patterns(letters: str) -> list[re.Pattern]:
    """Most explicit first: the first pattern that matches anywhere decides (its last match)."""
    L = f"[{re.escape(letters)}]"
    end = r"(?![A-Za-z])"
    return [
        # "answer": "C", 'answer': 'C', "答案": "C", Answer: (C), 答案：C (NFKC made it ASCII)
        re.compile(rf"""["']?(?:answer|答案)["']?\s*[:=]\s*["']?\(?({L})\)?["']?{end}""", re.I),
        # 答案是C / 答案为 C / 正确答案应该是(B) / the answer is C
        re.compile(rf"答案\s*(?:是|为|应为|应该是|选)\s*\(?({L})\)?{end}"),
        re.compile(rf"\banswer\s+(?:is|would be|should be)\s*:?\s*\(?({L})\)?{end}", re.I),
        # 选C / 选择 B
        re.compile(rf"选(?:择)?\s*\(?({L})\)?{end}"),
        # (C) on its own
        re.compile(rf"\(({L})\)"),
    ]


def extract_choice(text: str, letters) -> str | None:
    """The chosen letter, one of `letters` (e.g. "ABCD" or ["A", "B", ...]), or None."""
    letters = "".join(letters).upper()
    t = normalize_text(text)
    for pattern in _letter_patterns(letters):
        found = pattern.findall(t)
        if found:
            return found[-1].upper()
    bare = t.strip().rstrip(".。)").lstrip("(").strip()
    if len(bare) == 1 and bare in letters:  # the whole reply is the letter
        return bare
    return None


def _math_verify_timeout() -> int | None:
    # math-verify times out with SIGALRM, which only the main thread can use; elsewhere (batch
    # runners' threads) it runs without one.
    return 5 if threading.current_thread() is threading.main_thread() else None


def parse_math(answer: str):
    """math-verify's parse of an answer string (boxed, so that LaTeX extraction applies)."""
    from math_verify import parse

    boxed = answer if "\\boxed" in answer else f"\\boxed{{{answer}}}"
    return parse(boxed, parsing_timeout=_math_verify_timeout())


def math_equivalent(gold: str, predicted: str | None) -> bool:
    """Whether `predicted` equals `gold` by math-verify (gold first)."""
    from math_verify import verify

    if predicted is None or not predicted.strip():
        return False
    return bool(verify(parse_math(gold), parse_math(predicted), timeout_seconds=_math_verify_timeout()))


def majority_answer(answers: list[str | None], equivalent=None) -> tuple[str | None, int]:
    """Self-consistency vote: the answer with the most equivalent answers among `answers`, and
    that count. Ties go to the earliest. `equivalent` defaults to exact match."""
    equivalent = equivalent or (lambda a, b: a == b)
    clusters: list[list[str]] = []
    for a in answers:
        if a is None or a == "":
            continue
        for cluster in clusters:
            if equivalent(cluster[0], a):
                cluster.append(a)
                break
        else:
            clusters.append([a])
    if not clusters:
        return None, 0
    best = max(clusters, key=len)  # max keeps the first of equal lengths
    return best[0], len(best)
