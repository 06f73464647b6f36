"""Answer extraction from free text (what graders apply to unconstrained outputs): golden cases."""

import pytest

from megrez_sglang.answers import extract_choice, last_boxed, majority_answer, math_equivalent

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
