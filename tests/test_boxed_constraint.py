"""The \\boxed{} constraint can spell every right answer, on every grammar backend.

Each gold answer, written as ``\\boxed{<answer>}`` and tokenized by the checkpoint's tokenizer, is
fed token by token to the grammar SGLang compiles for each backend (its own XGrammar / Outlines /
LLGuidance backend classes, as the scheduler uses them): every token must be accepted and the
grammar must then accept end of sequence. BOXED_REGEX is checked on all three backends,
BOXED_EBNF on the two that compile EBNF. The quick test uses the hardest answers (brace groups,
long polynomials, matrices, sets, intervals, GSM8K commas and signs); the full test every gold
answer of MATH-500 and GSM8K (1,819), from the benchmark mirror.
"""

import json
import re

import pytest

from megrez_sglang.programs.grammars import (
    BOXED_EBNF,
    BOXED_GROUP_RUN,
    BOXED_MAX_CHARS,
    BOXED_REGEX,
    boxed_constraint,
)

HARD_GOLD_ANSWERS = [
    # the answers the former 24-item regex could not spell (MATH-500)
    r"\left( 3, \frac{\pi}{2} \right)",
    "x^5 - x^4 + x^3 - x^2 + x - 1",
    r"\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}",
    r"\begin{pmatrix} 16/49 \\ 48/49 \\ 24/49 \end{pmatrix}",
    r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}",
    r"\{1\pm\sqrt{5},-2\}",
    r"(-\infty, 2) \cup (3, \infty)",
    r"\left[ \frac{\pi^2}{8}, \frac{5 \pi^2}{4} \right]",
    r"\left(\frac{3}{5},\frac{8}{3}\right]",
    "x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1",
    # nesting two deep, text, units, degrees
    r"\frac{\sqrt{21}}{5}",
    r"\frac{270}7\text{ degrees}",
    r"\text{ellipse}",
    r"10\%",
    # GSM8K: thousands separators, negatives, decimals
    "114,200",
    "-3",
    "0.5",
]


def grammar_backends(tokenizer):
    """SGLang's three grammar backends for `tokenizer`, as its scheduler builds them."""
    from sglang.srt.constrained.llguidance_backend import GuidanceBackend
    from sglang.srt.constrained.outlines_backend import OutlinesGrammarBackend
    from sglang.srt.constrained.xgrammar_backend import XGrammarGrammarBackend

    vocab, eos = len(tokenizer), [tokenizer.eos_token_id]
    return {
        "xgrammar": XGrammarGrammarBackend(tokenizer, vocab_size=vocab, model_eos_token_ids=eos,
                                           any_whitespace=False),
        "outlines": OutlinesGrammarBackend(tokenizer, whitespace_pattern=None),
        "llguidance": GuidanceBackend(tokenizer=tokenizer, any_whitespace=False,
                                      whitespace_pattern=None, n_vocab=vocab, eos_token_ids=set(eos)),
    }


def spells(grammar, token_ids: list[int], eos: int) -> bool:
    """Whether the compiled `grammar` accepts `token_ids` and then end of sequence."""
    g = grammar.copy()
    name = type(g).__name__
    try:
        for t in token_ids + [eos]:
            if name == "OutlinesGrammar":  # its accept_token does not check; the guide says -1
                if t == eos:
                    return g.guide.is_final_state(g.state)
                g.state = g.guide.get_next_state(g.state, t)
                if g.state == -1:
                    return False
            else:
                g.accept_token(t)
                if name == "GuidanceGrammar" and g.ll_matcher.is_error():
                    return False
    except (ValueError, RuntimeError):  # XGrammar: "Tokens not accepted"
        return False
    return g.is_terminated()


@pytest.fixture(scope="module")
def compiled(tiny_checkpoint):
    """{(backend, form): compiled grammar} for BOXED_REGEX everywhere and BOXED_EBNF where it
    compiles; plus the tokenizer."""
    from sglang.srt.utils.hf_transformers.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(tiny_checkpoint)
    grammars = {}
    for name, backend in grammar_backends(tokenizer).items():
        grammars[name, "regex"] = backend.dispatch_regex(BOXED_REGEX)
        if "ebnf" in boxed_constraint(name):
            grammars[name, "ebnf"] = backend.dispatch_ebnf(BOXED_EBNF)
    return grammars, tokenizer


def unspelled(compiled, answers) -> dict[tuple[str, str], list[str]]:
    grammars, tokenizer = compiled
    misses = {key: [] for key in grammars}
    for answer in answers:
        ids = tokenizer.encode("\\boxed{" + answer + "}", add_special_tokens=False)
        for key, grammar in grammars.items():
            if not spells(grammar, ids, tokenizer.eos_token_id):
                misses[key].append(answer)
    return misses


def test_every_backend_gets_a_compiled_box(compiled):
    grammars, _ = compiled
    assert set(grammars) == {("xgrammar", "regex"), ("xgrammar", "ebnf"), ("outlines", "regex"),
                             ("llguidance", "regex"), ("llguidance", "ebnf")}
    assert boxed_constraint("outlines") == {"regex": BOXED_REGEX}
    assert boxed_constraint("xgrammar") == boxed_constraint("llguidance") == {"ebnf": BOXED_EBNF}


def test_the_hardest_gold_answers_are_spelled_on_every_backend(compiled):
    assert unspelled(compiled, HARD_GOLD_ANSWERS) == {key: [] for key in compiled[0]}


@pytest.mark.parametrize("text", [
    "\\boxed{}",  # empty
    "\\boxed{1\n2}",  # a newline
    "\\boxed{\\frac{1}{2}",  # unbalanced
    "\\boxed{\\frac{1}}{2}}",  # a closing brace too many
    "\\boxed{" + "7" * (BOXED_MAX_CHARS + 1) + "}",  # longer than the bound
    "\\fbox{3}",
])
def test_malformed_boxes_are_refused_on_every_backend(compiled, text):
    grammars, tokenizer = compiled
    ids = tokenizer.encode(text, add_special_tokens=False)
    accepted = [key for key, g in grammars.items() if spells(g, ids, tokenizer.eos_token_id)]
    assert accepted == []


def test_the_ebnf_bounds_each_run_of_characters(compiled):
    """The recursive EBNF bounds the runs between groups at every level (here: in a group)."""
    grammars, tokenizer = compiled
    for run, spelled in ((BOXED_GROUP_RUN, True), (BOXED_GROUP_RUN + 1, False)):
        ids = tokenizer.encode("\\boxed{x^{" + "7" * run + "}}", add_special_tokens=False)
        for backend in ("xgrammar", "llguidance"):
            assert spells(grammars[backend, "ebnf"], ids, tokenizer.eos_token_id) is spelled, (backend, run)


def test_deeper_nesting_than_any_gold_answer_is_spelled(compiled):
    deep = r"e^{\frac{\pi}{\sqrt{2}}}"  # three deep
    assert unspelled(compiled, [deep]) == {key: [] for key in compiled[0]}


def full_gold_answers(data_dir) -> list[str]:
    math500 = [json.loads(line)["answer"] for line in (data_dir / "math500" / "test.jsonl").open()]
    gsm8k = [json.loads(line)["answer"].split("####")[-1].strip()
             for line in (data_dir / "gsm8k" / "test.jsonl").open()]
    assert (len(math500), len(gsm8k)) == (500, 1319)
    return math500 + gsm8k


def test_every_math500_and_gsm8k_gold_answer_is_spelled_on_every_backend(compiled, full_data_dir):
    answers = full_gold_answers(full_data_dir)
    assert len(answers) == 1819
    assert all(re.fullmatch(BOXED_REGEX, "\\boxed{" + a + "}") for a in answers)  # Python's engine too
    assert unspelled(compiled, answers) == {key: [] for key in compiled[0]}
