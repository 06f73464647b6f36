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


# LaTeX and markdown wrappers that change how a letter looks, not what it says.
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|mathit)\s*\{([^{}]*)\}")
_MARKUP = re.compile(r"\*\*|__|\*|`|\\[()\[\]]|\$")


def _plain(text: str) -> str:
    """NFKC and quotes (normalize_text), then LaTeX text wrappers and markdown emphasis removed;
    a boxed option letter (``\\boxed{C}``, ``\\boxed{\\text{(C)}}``) becomes an answer statement."""
    t = normalize_text(text)
    while True:
        unwrapped = _LATEX_WRAPPERS.sub(r"\1", t)
        if unwrapped == t:
            break
        t = unwrapped
    t = re.sub(r"\\(?:boxed|fbox)\s*\{\s*\(?\s*([A-Za-z])\s*\)?\s*\}", r" answer: \1 ", t)
    t = _MARKUP.sub("", t)
    return re.sub(r"(?m)^[ \t]*(?:#+|>)[ \t]*", "", t)  # headings and quotes


def _statement_patterns(L: str) -> list[re.Pattern]:
    """Ways of stating the final answer; each captures the letter. `L` is a character class of
    the item's letters (either case: a lowercase one is checked where it is found)."""
    opt = r"(?:option|choice)"
    en_subject = rf"(?:answer|{opt})s?"
    return [re.compile(p, re.I) for p in (
        # "answer": "C" / 'answer': 'C' / "答案": "C" / Answer: (C) / Final answer: D / Correct option: C
        rf"""["']?(?:{en_subject}|答案)["']?\s*[:=]\s*["']?\s*{opt}?\s*\(?({L})\)?""",
        rf"\banswer\s*\n\s*\(?({L})\)?",  # a heading "Answer" then the letter on its own line
        # the (correct) answer is C / the right choice is option C / the answer should be (B)
        rf"\b{en_subject}\s+(?:is|would be|should be|must be|will be)\s*:?\s*"
        rf"(?:clearly\s+|definitely\s+|likely\s+|probably\s+)?(?:{opt}\s+)?\(?({L})\)?",
        # C is the correct answer / Option D is correct / (D) is the right choice / D is the answer
        rf"(?:\b{opt}\s+)?\(?\b({L})\)?\s+is\s+(?:the\s+)?(?:correct|right|best|answer)",
        # I choose C / I'd go with (B) / I'll pick option B / select D
        rf"\b(?:choose|chose|pick|select|go with|opt for)\s+(?:{opt}\s+)?\(?({L})\)?",
        # which is option B / that matches option D / corresponds to option C
        rf"\b(?:is|matches|corresponds to)\s+{opt}\s+\(?({L})\)?",
        # 答案是C / 答案为（B） / 正确答案：D / 答案应该是 A / [答案]B
        rf"答案\]?\s*(?:是|为|应为|应该是|应是|选)?\s*[:：]?\s*\(?({L})\)?",
        rf"(?:^|\n)\s*答\s*[:：]\s*\(?({L})\)?",  # 答：C
        # 正确选项是C / 所以正确的是D / 正确的选项为 B
        rf"正确(?:的)?(?:选项|答案)?(?:是|为|应为)\s*[:：]?\s*\(?({L})\)?",
        # 故选D / 应选B / 因此选 C 项 / 故选：A (not 选项A, which names an option)
        rf"选(?:择)?(?!项)\s*[:：]?\s*\(?({L})\)?",
        # 选项B正确 / C项正确 / D选项正确 / 对应选项B
        rf"(?:选项\s*)?\(?({L})\)?\s*(?:选项|项)?\s*(?:正确|是正确的|符合题意)",
        rf"对应(?:选项)?\s*\(?({L})\)?",
    )]


def _stated_letters(t: str, letters: str) -> list[tuple[int, str]]:
    """(position, letter) of every answer statement in `t` whose letter is one of `letters` and
    names one option (not "A or B", "B和C")."""
    L = "[" + re.escape(letters + letters.lower()) + "]"
    several = re.compile(rf"\s*\)?\s*(?:,|，|、|/|\bor\b|\band\b|或者?|和|与|及)\s*"
                         rf"(?:option\s*|选项\s*)?\(?{L}(?![A-Za-z])", re.I)
    found = []
    for pattern in _statement_patterns(L):
        for m in pattern.finditer(t):
            letter, end = m.group(1), m.end(1)
            after = t[end:]
            # part of a word: "the answer is a bit ...", "Option A's claim"
            if re.match(r"\)?(?:[A-Za-z0-9]|['’]s\b)", after):
                continue
            # a lowercase letter counts only where nothing follows it but punctuation or the end
            if letter.islower() and not re.match(r"""\)?\s*(?:$|[.。,，;；:："'}\])])""", after):
                continue
            if several.match(after):
                continue
            found.append((m.start(1), letter.upper()))
    return found


def _leading_letter(t: str, letters: str) -> str | None:
    """A reply that IS the letter ("B", "(C)", "D.") or opens with it ("C) 12", "B\n\nExplanation",
    "A — 1914."), unless the reply is a list of options ("A. 12\nB. 15 ...")."""
    L = f"[{re.escape(letters)}]"
    t = t.strip()
    whole = re.fullmatch(rf"\(?({L})\)?[.。]?", t)
    if whole:
        return whole.group(1)
    labels = re.findall(rf"(?<![A-Za-z])\(?({L})[.)、:：](?=\s|$)", t)  # "A. 12", "B) 15", "C：..."
    if len(set(labels)) > 1:
        return None
    lead = re.match(rf"\(?({L})(?:\)|[.。:：、]|\s*[—–-]\s|\s*\n)", t)
    return lead.group(1) if lead else None


def extract_choice(text: str, letters) -> str | None:
    """The chosen letter, one of `letters` (e.g. "ABCD" or ["A", "B", ...]), or None.

    The LAST answer statement counts (a self-correction overrides the first answer): answer JSON,
    "Answer: C", "the answer is C", "C is correct", "I choose C", 「答案是C」, 「正确选项为C」,
    「故选C」, 「C项正确」, a boxed letter, with markdown emphasis, LaTeX text wrappers and full-width
    characters removed first. A statement that names several options ("A or B", 「B和C」) counts
    as none. Without any statement, a reply that is (or opens with) the letter. Precision first:
    no "first capital letter", no letter inside a word, None rather than a guess."""
    letters = "".join(letters).upper()
    t = _plain(text)
    stated = _stated_letters(t, letters)
    if stated:
        return max(stated)[1]
    return _leading_letter(t, letters)


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
            if a == cluster[0] or equivalent(cluster[0], a):  # math-verify may parse neither
                cluster.append(a)
                break
        else:
            clusters.append([a])
    if not clusters:
        return None, 0
    best = max(clusters, key=len)  # max keeps the first of equal lengths
    return best[0], len(best)
