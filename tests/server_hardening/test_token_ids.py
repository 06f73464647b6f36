"""4. Prompts and token ids outside the vocabulary get 400 naming them, and the server keeps
serving."""

from __future__ import annotations

import pytest
import requests

from ..conftest import API_KEY
from .replies import (
    bearer,
    error_message,
    generates,
    healthy,
)


def token_id_cases(v: int) -> list[tuple[str, str, dict, list[str]]]:
    """(name, path, body, what the 400 must say) for vocabulary size v."""
    chat = {"model": "megrez-moe", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2}
    gen = {"text": "你好", "sampling_params": {"max_new_tokens": 2}}
    ids_range = f"valid token ids are 0..{v - 1}"
    return [
        ("/generate input_ids", "/generate",
         {"input_ids": [1000000000, -5], "sampling_params": {"max_new_tokens": 2}},
         ["input_ids[0] = 1000000000", ids_range]),
        ("/generate batched input_ids", "/generate",
         {"input_ids": [[1, 2], [3, -5]], "sampling_params": {"max_new_tokens": 2}},
         ["input_ids[1] = -5", ids_range]),
        ("/v1/completions token prompt", "/v1/completions",
         {"model": "megrez-moe", "prompt": [5, v], "max_tokens": 2}, [f"input_ids[1] = {v}", ids_range]),
        ("/v1/completions batched token prompts", "/v1/completions",
         {"model": "megrez-moe", "prompt": [[5, 6], [7, -1]], "max_tokens": 2},
         ["input_ids[1] = -1", ids_range]),
        ("token_ids_logprob", "/generate", {**gen, "return_logprob": True, "token_ids_logprob": [3, v]},
         [f"token id {v}", f"[0, {v})"]),
        ("chat logit_bias", "/v1/chat/completions", {**chat, "logit_bias": {str(v): 5}},
         [f"got {v}", f"[0, {v - 1}]"]),
        ("completions logit_bias", "/v1/completions",
         {"model": "megrez-moe", "prompt": "你好", "max_tokens": 2, "logit_bias": {"-3": 5}},
         ["got -3", f"[0, {v - 1}]"]),
        ("/generate stop_token_ids", "/generate",
         {"text": "你好", "sampling_params": {"max_new_tokens": 4, "min_new_tokens": 2,
                                              "stop_token_ids": [v]}},
         [f"stop_token_ids contains {v}", ids_range]),
        ("chat stop_token_ids", "/v1/chat/completions", {**chat, "stop_token_ids": [-1], "min_tokens": 1},
         ["stop_token_ids contains -1", ids_range]),
        ("/generate top_logprobs_num", "/generate",
         {**gen, "return_logprob": True, "top_logprobs_num": 10 * v},
         [f"top_logprobs_num = {10 * v}", f"0..{v}"]),
        ("chat top_logprobs", "/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": v + 1},
         [f"top_logprobs_num = {v + 1}", f"0..{v}"]),
        ("/detokenize", "/detokenize", {"model": "megrez-moe", "tokens": [5, -1]},
         ["tokens[1] = -1", ids_range]),
        ("/generate empty text prompt", "/generate", {"text": "", "sampling_params": {"max_new_tokens": 2}},
         ["the prompt is empty"]),
        ("/generate batch with an empty text prompt", "/generate",
         {"text": ["你好", ""], "sampling_params": {"max_new_tokens": 2}}, ["the prompt is empty"]),
    ]


@pytest.mark.parametrize("case", range(len(token_id_cases(100))),
                         ids=[c[0] for c in token_id_cases(100)])
def test_token_ids_outside_the_vocabulary_get_400_naming_them_and_the_server_keeps_serving(
        server, vocab_size, case):
    _, path, body, fragments = token_id_cases(vocab_size)[case]
    r = requests.post(f"{server.url}{path}", headers=bearer(API_KEY), json=body, timeout=60)
    assert r.status_code == 400, r.text[:300]
    for fragment in fragments:
        assert fragment in error_message(r), (fragment, r.text[:300])
    assert healthy(server.url) and generates(server.url)


def test_the_first_and_last_token_ids_are_accepted(server, vocab_size):
    r = requests.post(f"{server.url}/generate", headers=bearer(API_KEY), timeout=60, json={
        "input_ids": [0, vocab_size - 1], "return_logprob": True, "token_ids_logprob": [0, vocab_size - 1],
        "sampling_params": {"max_new_tokens": 2, "min_new_tokens": 1, "stop_token_ids": [vocab_size - 1]}})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["meta_info"]["prompt_tokens"] == 2


def test_a_frontend_language_program_sending_a_bad_token_id_is_refused(server, vocab_size):
    """The frontend language sends token ids only as stop_token_ids (its prompts are text; its
    choice scoring re-sends ids the server itself returned): those go through /generate."""
    import sglang as sgl

    from megrez_sglang.programs import endpoint

    @sgl.function
    def short_answer(s):
        s += "问题：世界上最高的山峰是哪座？答案：" + sgl.gen("answer", max_tokens=4, min_tokens=1,
                                                       stop_token_ids=[vocab_size])

    state = short_answer.run(backend=endpoint(server.url, api_key=API_KEY))
    assert isinstance(state.error(), RuntimeError)
    assert f"stop_token_ids contains {vocab_size}" in str(state.error())
    assert healthy(server.url) and generates(server.url)
