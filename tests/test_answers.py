"""Answer extraction from free text (what graders apply to unconstrained outputs): golden cases,
and a corpus of multiple-choice answers written the way chat models write them."""

import json
from collections import Counter
from pathlib import Path

import pytest

from megrez_sglang.programs.answers import extract_choice, last_boxed, majority_answer, math_equivalent

BOXED = [
    (r"so \boxed{5}", "5"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{1}, finally \boxed{2}", "2"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{x^{2}+\left\{1\right\}}", r"x^{2}+\left\{1\right\}"),
    (r"答案是 \boxed 5.", "5"),
    (r"\fbox{42}", "42"),
    (r"\boxed{}", ""),
    (r"\boxed{1, 2, 3}", "1, 2, 3"),
    (r"no box here: 5", None),
    (r"unbalanced \boxed{1", None),
    (r"\boxed{2} and a broken \boxed{3", "2"),
    (r"$\boxed{-18.00}$", "-18.00"),
    (r"\boxed {7}", "7"),
    ("\\boxed{\\text{(B)}}", "\\text{(B)}"),
]


@pytest.mark.parametrize("text, expected", BOXED)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


CHOICES = [
    ('{"answer": "C"}', "ABCD", "C"),
    ('{"answer":"B"}', "ABCD", "B"),
    ("“answer”：“D”", "ABCD", "D"),  # curly quotes, full-width colon
    ('"答案": "A"', "ABCD", "A"),
    ("答案：C", "ABCD", "C"),
    ("「答案：D」", "ABCD", "D"),
    ("答案是B。", "ABCD", "B"),
    ("正确答案为 A", "ABCD", "A"),
    ("答案应该是(C)", "ABCD", "C"),
    ("（B）", "ABCD", "B"),  # full-width parentheses
    ("(C)", "ABCD", "C"),
    ("The answer is (D).", "ABCD", "D"),
    ("ANSWER: b", "ABCD", "B"),
    ("Answer: J", "ABCDEFGHIJ", "J"),
    ("answer: J", "ABCD", None),  # not one of the item's letters
    ('{"answer": "E"}', "ABCD", None),
    ("Please think carefully.", "ABCD", None),  # never "the first capital letter"
    ("C", "ABCD", "C"),
    ("C.", "ABCD", "C"),
    ("选C", "ABCD", "C"),
    ("答案是C，因为选项D错误", "ABCD", "C"),
    ('{"answer": "Ｃ"}', "ABCD", "C"),  # full-width letter
    ("I think A is wrong; the answer is B", "ABCD", "B"),
    ('{"answer": "A"} ... {"answer": "C"}', "ABCD", "C"),  # the last answer object
    ("", "ABCD", None),
    ("A: 12, B: 15, C: 18, D: 21", "ABCD", None),  # the options on one line, no choice
    ("The answer is A, B, or C", "ABCD", None),
    ("The answer is probably C.", "ABCD", "C"),
    ("Option A's claim is wrong; the answer is B", "ABCD", "B"),
]


@pytest.mark.parametrize("text, letters, expected", CHOICES)
def test_extract_choice(text, letters, expected):
    assert extract_choice(text, letters) == expected


@pytest.mark.parametrize("gold, predicted, equal", [
    (r"\frac{1}{2}", "0.5", True),
    ("14", "14.0", True),
    ("1000", "1,000", True),
    (r"10\%", "10%", True),
    ("3", "4", False),
    ("x=2", "2", True),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}", True),
    ("2", "", False),
])
def test_math_equivalence_by_math_verify(gold, predicted, equal):
    assert math_equivalent(gold, predicted) is equal


def test_majority_vote_clusters_equivalent_answers():
    answers = ["1/2", "0.5", "3", None, r"\frac{1}{2}", "3"]
    assert majority_answer(answers, math_equivalent) == ("1/2", 3)
    assert majority_answer(["B", "C", "B", None]) == ("B", 2)
    assert majority_answer([None, ""]) == (None, 0)


PHRASINGS = [json.loads(line) for line in
             (Path(__file__).parent / "data" / "choice_answer_phrasings.jsonl").open(encoding="utf-8")]


def test_the_phrasing_corpus_has_what_models_write_in_both_languages():
    assert len(PHRASINGS) >= 150
    assert Counter(p["lang"] for p in PHRASINGS).keys() == {"zh", "en"}
    forms = Counter(p["form"] for p in PHRASINGS)
    for form in ("markdown", "latex", "json", "full-width", "explanation", "self-correction",
                 "restated", "refusal", "hedge"):
        assert forms[form] >= 3, form
    assert sum(p["expected"] is None for p in PHRASINGS) >= 30


def test_extraction_reads_at_least_98_percent_of_the_phrasings():
    misses = [(p["text"], p["expected"], extract_choice(p["text"], p["letters"])) for p in PHRASINGS
              if extract_choice(p["text"], p["letters"]) != p["expected"]]
    assert len(misses) <= 0.02 * len(PHRASINGS), misses


def test_extraction_never_reads_a_letter_where_a_reader_finds_none_or_another():
    wrong = [(p["text"], p["expected"], extract_choice(p["text"], p["letters"])) for p in PHRASINGS
             if extract_choice(p["text"], p["letters"]) not in (None, p["expected"])]
    assert wrong == []
