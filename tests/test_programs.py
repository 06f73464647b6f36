"""The frontend-language programs on the tiny random model at temperature 0.7: constrained runs
are always format-valid and never leave the item's letters; the same prompts unconstrained are
mostly invalid (the constraint does the work); self-consistency reuses the shared prefix."""

import json
import re

import openai
import pytest

from megrez_sglang.model.prompts import option_letters
from megrez_sglang.programs import (
    answer_choice,
    answer_choice_batch,
    answer_choice_self_consistent,
    endpoint,
    runtime,
    solve_math,
    solve_math_batch,
    solve_math_self_consistent,
)
from megrez_sglang.programs.answers import extract_choice
from megrez_sglang.programs.choice import (
    REASONING_MAX_TOKENS,
    REASONING_STOPS,
    opens_answer_object,
    reasoning_before_the_answer_object,
)
from megrez_sglang.programs.grammars import answer_json_regex
from megrez_sglang.programs.math import box_content
from megrez_sglang.programs.openai_recipes import openai_choice, openai_math, server_grammar_backend

from .conftest import API_KEY

RUNS = 50
MATH_QUESTIONS = [f"小明有{a}个苹果，又买了{b}个，现在有多少个？" if a % 2 else f"What is {a} + {b}?"
                  for a, b in zip(range(3, 3 + RUNS), range(40, 40 + RUNS), strict=True)]


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
    """Exactly one well-formed final answer: \\boxed{...} around a non-empty answer with balanced
    braces and no newline. (Not re.fullmatch(BOXED_REGEX): a random model can emit byte tokens
    that SGLang's detokenizer shows as U+FFFD, one per byte, which changes the character count,
    not the form.)"""
    content = box_content(text)
    return (content is not None and text == "\\boxed{" + content + "}" and len(content) > 0
            and not re.search(r"[\x00-\x1f]", content))


def test_math_program_is_always_format_valid(backend):
    results = solve_math_batch(MATH_QUESTIONS, backend, reasoning_max_tokens=24, num_threads=16,
                               progress_bar=False, **SAMPLING)
    assert len(results) == RUNS
    for r in results:
        boxed = r.text[len(r.reasoning):]
        assert is_boxed_answer(boxed), boxed
        assert r.answer is not None and r.text == r.reasoning + "\\boxed{" + r.answer + "}"
        assert "\n" not in r.answer
    assert len({r.answer for r in results}) > RUNS // 2  # sampled, not one canned answer


def test_math_prompts_unconstrained_are_mostly_invalid(backend):
    results = solve_math_batch(MATH_QUESTIONS, backend, constrained=False, reasoning_max_tokens=40,
                               num_threads=16, progress_bar=False, **SAMPLING)
    assert sum(r.answer is not None for r in results) <= RUNS // 10


def test_choice_program_is_always_valid_and_within_the_items_letters(backend):
    results = answer_choice_batch(CHOICE_ITEMS, backend, reasoning_max_tokens=0, num_threads=16,
                                  progress_bar=False, **SAMPLING)
    for (_question, options), r in zip(CHOICE_ITEMS, results, strict=True):
        letters = option_letters(options)
        assert re.fullmatch(answer_json_regex(letters), r.text), r.text
        assert json.loads(r.text) == {"answer": r.letter} and r.letter in letters
    assert len({r.letter for r in results}) >= 4


def ends_with_the_answer_object(result, letters) -> bool:
    """The reply is the reasoning (without an answer object the model began itself), then the
    whole answer object naming the result's letter, one of `letters`."""
    answer = result.text[len(result.reasoning):]
    return (result.text.startswith(result.reasoning) and not opens_answer_object(result.reasoning)
            and result.letter in letters and re.fullmatch(answer_json_regex(letters), answer) is not None
            and json.loads(answer) == {"answer": result.letter})


def test_choice_program_with_reasoning_is_valid(backend):
    results = answer_choice_batch(CHOICE_ITEMS[:10], backend, reasoning_max_tokens=16,
                                  num_threads=10, progress_bar=False, **SAMPLING)
    for (_, options), r in zip(CHOICE_ITEMS[:10], results, strict=True):
        assert ends_with_the_answer_object(r, option_letters(options)), r.text


def test_choice_prompts_unconstrained_are_mostly_invalid(backend):
    results = answer_choice_batch(CHOICE_ITEMS, backend, constrained=False, reasoning_max_tokens=0,
                                  num_threads=16, progress_bar=False, **SAMPLING)
    valid = [r for (_, o), r in zip(CHOICE_ITEMS, results, strict=True)
             if re.fullmatch(answer_json_regex(option_letters(o)), r.text)]
    assert len(valid) <= RUNS // 10
    assert sum(extract_choice(r.text, option_letters(o)) is not None
               for (_, o), r in zip(CHOICE_ITEMS, results, strict=True)) <= RUNS // 2


def test_math_self_consistency_serves_the_shared_prefix_from_the_cache(backend):
    """Run twice: on a cold cache SGLang 0.5.23 may prefill the k branches side by side (none
    finds the prompt cached); the second run's branches all find it."""
    for _ in range(2):
        vote = solve_math_self_consistent("小明有3个苹果，又买了5个，现在有多少个？", backend, k=8,
                                          reasoning_max_tokens=16, **SAMPLING)
    assert len(vote.samples) == 8 and all(s.answer is not None for s in vote.samples)
    assert len(vote.branch_cached_tokens) == 8 and min(vote.branch_cached_tokens) >= 40
    from megrez_sglang.programs.answers import math_equivalent

    assert vote.votes == sum(s.answer == vote.answer or math_equivalent(vote.answer, s.answer)
                             for s in vote.samples)


def test_choice_self_consistency_votes_among_the_items_letters(backend):
    question, options = choice_item(4)
    for _ in range(2):  # the second run's branches find the prompt cached (see above)
        vote = answer_choice_self_consistent(question, options, backend, k=8, reasoning_max_tokens=16,
                                             **SAMPLING)
    letters = [s.letter for s in vote.samples]
    assert set(letters) <= set(option_letters(options))
    assert all(ends_with_the_answer_object(s, option_letters(options)) for s in vote.samples)
    assert vote.votes == letters.count(vote.letter) == max(letters.count(l) for l in letters)
    assert min(vote.branch_cached_tokens) >= 40


def test_openai_client_recipes_are_format_valid(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)
    for i in range(5):
        m = openai_math(client, "megrez-moe", MATH_QUESTIONS[i], reasoning_max_tokens=16)
        assert is_boxed_answer(m.text[len(m.reasoning):]) and m.answer is not None
        question, options = CHOICE_ITEMS[i]
        c = openai_choice(client, "megrez-moe", question, options, reasoning_max_tokens=16)
        if c.reasoning.strip():
            assert ends_with_the_answer_object(c, option_letters(options)), c.text
        else:  # answered at once, under the JSON schema
            assert json.loads(c.text) == {"answer": c.letter} and c.letter in option_letters(options)


def test_programs_run_in_process_through_sgl_runtime(tiny_checkpoint, server):
    rt = runtime(tiny_checkpoint)  # sgl.Runtime scans ports from 30000 (its scan stops at 40000)
    try:
        r = solve_math("1 + 1 = ?", rt.endpoint, reasoning_max_tokens=8, **SAMPLING)
        assert is_boxed_answer(r.text[len(r.reasoning):])
        question, options = CHOICE_ITEMS[1]
        [c] = answer_choice_batch([(question, options)], rt.endpoint, reasoning_max_tokens=8,
                                  progress_bar=False)
        assert c.letter in option_letters(options)
    finally:
        rt.shutdown()


@pytest.fixture
def generate_requests(monkeypatch):
    """The /generate requests the frontend language sends, with the server's replies."""
    import sglang.lang.backend.runtime_endpoint as runtime_endpoint

    sent = []
    send = runtime_endpoint.http_request

    def recording(url, json=None, **kwargs):
        response = send(url, json=json, **kwargs)
        if url.endswith("/generate") and json is not None:
            sent.append((json, response.json()))
        return response

    monkeypatch.setattr(runtime_endpoint, "http_request", recording)
    return sent


def test_choice_reasons_within_the_budget_then_answers_under_the_items_letters(backend, generate_requests):
    question, options = CHOICE_ITEMS[3]
    r = answer_choice(question, options, backend, **SAMPLING)  # the default protocol
    (reasoning_req, reasoning_out), (answer_req, answer_out) = generate_requests
    assert reasoning_req["sampling_params"]["max_new_tokens"] == REASONING_MAX_TOKENS == 1024
    assert set(REASONING_STOPS) <= set(reasoning_req["sampling_params"]["stop"])
    assert reasoning_req["sampling_params"].get("regex") is None
    assert answer_req["sampling_params"]["regex"] == answer_json_regex(option_letters(options))
    # answers after the reasoning, up to (not into) an answer object the model began itself
    assert r.reasoning == reasoning_before_the_answer_object(reasoning_out["text"])
    assert answer_req["text"] == reasoning_req["text"] + r.reasoning
    assert r.text == r.reasoning + answer_out["text"]
    assert r.completion_tokens == (reasoning_out["meta_info"]["completion_tokens"]
                                   + answer_out["meta_info"]["completion_tokens"])


def test_a_zero_budget_answers_directly(backend, generate_requests):
    question, options = CHOICE_ITEMS[4]
    r = answer_choice(question, options, backend, reasoning_max_tokens=0, **SAMPLING)
    [(request, _)] = generate_requests
    assert request["sampling_params"]["regex"] == answer_json_regex(option_letters(options))
    assert r.reasoning == "" and json.loads(r.text) == {"answer": r.letter}


@pytest.mark.parametrize("own_answer, left_in_reasoning", [
    ('{"answer": "B"}', "{"), ('{\n  "answer": "B"\n}', "{\n  "), ('"answer": "B"', ""),
    ('```json\n{"answer": "B"}\n```', ""),
])
def test_reasoning_stops_where_the_model_starts_its_own_answer_object(server, own_answer,
                                                                     left_in_reasoning):
    """A reply that goes on to write the answer object itself is cut at its "answer" key (or its
    code fence); the program then drops an opening brace it wrote, leaving the reasoning alone."""
    import requests

    reasoning = "Because 3 + 5 = 8, only B fits. "
    forced = re.escape(reasoning + own_answer).replace("\\ ", " ")  # XGrammar: no "\ " escape
    r = requests.post(f"{server.url}/generate", headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"text": "Q: which? A. 7 B. 8\n", "sampling_params": {
                          "max_new_tokens": 64, "temperature": 0, "stop": REASONING_STOPS,
                          "regex": forced}}, timeout=120)
    assert r.status_code == 200 and r.json()["text"] == reasoning + left_in_reasoning
    assert opens_answer_object(r.json()["text"]) is (left_in_reasoning != "")
    assert reasoning_before_the_answer_object(r.json()["text"]).rstrip() == reasoning.rstrip()


def test_eval_choice_recipe_reasons_then_continues_the_turn_under_the_schema(server):
    import httpx

    bodies = []
    http = httpx.Client(event_hooks={"request": [lambda req: bodies.append(json.loads(req.content))]})
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, http_client=http)
    question, options = CHOICE_ITEMS[5]
    c = openai_choice(client, "megrez-moe", question, options, reasoning_max_tokens=24)
    chats = [b for b in bodies if "messages" in b]
    if not c.reasoning.strip():  # the model went straight to its answer: one request
        assert len(chats) == 2 and chats[1]["messages"] == chats[0]["messages"]
        return
    first, second = chats
    assert first["max_tokens"] == 24 and first["stop"] == REASONING_STOPS and "response_format" not in first
    assert second["messages"][-1] == {"role": "assistant", "content": c.reasoning}
    assert second["continue_final_message"] is True
    assert second["regex"] == answer_json_regex(option_letters(options))
    assert ends_with_the_answer_object(c, option_letters(options))
    assert server_grammar_backend(client) == "xgrammar"  # the eval's box form follows the server


@pytest.mark.parametrize("box, answer", [
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{see \boxed 5 above}", r"see \boxed 5 above"),  # last_boxed would read "5"
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{\frac{1}{2", None),  # cut off by the token budget: nothing to read
])
def test_box_content_is_the_whole_constrained_box(box, answer):
    assert box_content(box) == answer
