"""The frontend-language programs on the tiny random model at temperature 0.7: constrained runs
are always format-valid and never leave the item's letters; the same prompts unconstrained are
mostly invalid (the constraint does the work); self-consistency reuses the shared prefix."""

import json
import re

import openai
import pytest

from megrez_sglang.answers import extract_choice, last_boxed
from megrez_sglang.programs import (answer_choice_batch, answer_choice_self_consistent,
                                    endpoint, runtime, solve_math, solve_math_batch,
                                    solve_math_self_consistent)
from megrez_sglang.programs.grammars import answer_json_regex
from megrez_sglang.programs.openai_recipes import openai_choice, openai_math
from megrez_sglang.prompts import option_letters

from .conftest import API_KEY

RUNS = 50
MATH_QUESTIONS = [f"小明有{a}个苹果，又买了{b}个，现在有多少个？" if a % 2 else f"What is {a} + {b}?"
                  for a, b in zip(range(3, 3 + RUNS), range(40, 40 + RUNS))]


def choice_item(i):
    """Items with 2-10 options; every third one lettered non-contiguously."""
    n = 2 + i % 9
    if i % 3 == 0:
        letters = "ACEGIKMO"[: min(n, 8)]
        return f"Question {i}: which one?", {l: f"option {l.lower()}{i}" for l in letters}
    return f"第{i}题：哪一项正确？", [f"选项内容{j}" for j in range(n)]


CHOICE_ITEMS = [choice_item(i) for i in range(RUNS)]
SAMPLING = dict(temperature=0.7, top_p=0.9)




@pytest.fixture(scope="module")
def backend(server):
    return endpoint(server.url, api_key=API_KEY)


def is_boxed_answer(text: str) -> bool:
    """Exactly one well-formed final answer: \\boxed{...} with balanced braces, no newline.
    (Not re.fullmatch(BOXED_REGEX): a random model can emit byte tokens that SGLang's detokenizer
    shows as U+FFFD, one per byte, which changes the character count, not the form.)"""
    content = last_boxed(text)
    return (content is not None and text == "\\boxed{" + content + "}" and len(content) > 0
            and not re.search(r"[\x00-\x1f]", content))


def test_math_program_is_always_format_valid(backend):
    results = solve_math_batch(MATH_QUESTIONS, backend, reasoning_max_tokens=24, num_threads=16,
                               progress_bar=False, **SAMPLING)
    assert len(results) == RUNS
    for r in results:
        boxed = r.text[len(r.reasoning):]
        assert is_boxed_answer(boxed), boxed
        assert r.answer is not None and r.answer == last_boxed(r.text) and "\n" not in r.answer
    assert len({r.answer for r in results}) > RUNS // 2  # sampled, not one canned answer


def test_math_prompts_unconstrained_are_mostly_invalid(backend):
    results = solve_math_batch(MATH_QUESTIONS, backend, constrained=False, reasoning_max_tokens=40,
                               num_threads=16, progress_bar=False, **SAMPLING)
    assert sum(r.answer is not None for r in results) <= RUNS // 10


def test_choice_program_is_always_valid_and_within_the_items_letters(backend):
    results = answer_choice_batch(CHOICE_ITEMS, backend, num_threads=16, progress_bar=False, **SAMPLING)
    for (question, options), r in zip(CHOICE_ITEMS, results):
        letters = option_letters(options)
        assert re.fullmatch(answer_json_regex(letters), r.text), r.text
        assert json.loads(r.text) == {"answer": r.letter} and r.letter in letters
    assert len({r.letter for r in results}) >= 4


def test_choice_program_with_reasoning_is_valid(backend):
    results = answer_choice_batch(CHOICE_ITEMS[:10], backend, reasoning_max_tokens=16,
                                  num_threads=10, progress_bar=False, **SAMPLING)
    for (_, options), r in zip(CHOICE_ITEMS, results):
        assert r.letter in option_letters(options)
        assert r.text == r.reasoning + json.dumps({"answer": r.letter})


def test_choice_prompts_unconstrained_are_mostly_invalid(backend):
    results = answer_choice_batch(CHOICE_ITEMS, backend, constrained=False, num_threads=16,
                                  progress_bar=False, **SAMPLING)
    valid = [r for (_, o), r in zip(CHOICE_ITEMS, results)
             if re.fullmatch(answer_json_regex(option_letters(o)), r.text)]
    assert len(valid) <= RUNS // 10
    assert sum(extract_choice(r.text, option_letters(o)) is not None
               for (_, o), r in zip(CHOICE_ITEMS, results)) <= RUNS // 2


def test_math_self_consistency_serves_the_shared_prefix_from_the_cache(backend):
    vote = solve_math_self_consistent("小明有3个苹果，又买了5个，现在有多少个？", backend, k=8,
                                      reasoning_max_tokens=16, **SAMPLING)
    assert len(vote.samples) == 8 and all(s.answer is not None for s in vote.samples)
    assert len(vote.branch_cached_tokens) == 8 and min(vote.branch_cached_tokens) >= 40
    from megrez_sglang.answers import math_equivalent

    assert vote.votes == sum(math_equivalent(vote.answer, s.answer) for s in vote.samples)


def test_choice_self_consistency_votes_among_the_items_letters(backend):
    question, options = choice_item(4)
    vote = answer_choice_self_consistent(question, options, backend, k=8, **SAMPLING)
    letters = [s.letter for s in vote.samples]
    assert set(letters) <= set(option_letters(options))
    assert vote.votes == letters.count(vote.letter) == max(letters.count(l) for l in letters)
    assert min(vote.branch_cached_tokens) >= 40


def test_openai_client_recipes_are_format_valid(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)
    for i in range(5):
        m = openai_math(client, "megrez-moe", MATH_QUESTIONS[i], reasoning_max_tokens=16)
        assert is_boxed_answer(m.text[len(m.reasoning):]) and m.answer is not None
        question, options = CHOICE_ITEMS[i]
        c = openai_choice(client, "megrez-moe", question, options)
        assert c.letter in option_letters(options)


def test_programs_run_in_process_through_sgl_runtime(tiny_checkpoint, server):
    rt = runtime(tiny_checkpoint)  # sgl.Runtime scans ports from 30000 (its scan stops at 40000)
    try:
        r = solve_math("1 + 1 = ?", rt.endpoint, reasoning_max_tokens=8, **SAMPLING)
        assert is_boxed_answer(r.text[len(r.reasoning):])
        question, options = CHOICE_ITEMS[1]
        [c] = answer_choice_batch([(question, options)], rt.endpoint, progress_bar=False)
        assert c.letter in option_letters(options)
    finally:
        rt.shutdown()
