"""10. Admission limits (400 naming the limit, nothing queued) and seeds SGLang would drop."""

from __future__ import annotations

import pytest

from .replies import (
    CHAT,
    COMPLETION,
    error_message,
    nothing_queued_or_running,
    post,
)

# The shared server runs with the default limits: n <= 8, <= 64 prompts, and at most its KV pool
# (16,384 tokens on CPU) of new tokens per request; its context is 4096 tokens, its hidden size 64.
OVER_THE_LIMITS = {
    "chat n=25000 (the request that held the server for 5 minutes)": (
        "/v1/chat/completions", {**CHAT, "n": 25000, "max_tokens": 2},
        "n = 25000 is above this server's limit of 8 samples per prompt (launch_server.sh --max-n)"),
    "a streamed chat, refused before its stream starts": (
        "/v1/chat/completions", {**CHAT, "n": 9, "max_tokens": 2, "stream": True},
        "n = 9 is above this server's limit of 8 samples per prompt"),
    "completions n x max_tokens above the KV pool": (
        "/v1/completions", {**COMPLETION, "n": 8, "max_tokens": 2049},
        "asks for up to 16392 new tokens (1 prompt(s) x n = 8 x max_tokens), above this server's limit "
        "of 16384 per request (launch_server.sh --max-request-tokens; by default its KV pool)"),
    "completions with 65 prompts": (
        "/v1/completions", {**COMPLETION, "prompt": ["你好"] * 65, "max_tokens": 1},
        "the request holds 65 prompts, above this server's limit of 64 per request (launch_server.sh "
        "--max-prompts)"),
    "/generate with 65 prompts": (
        "/generate", {"text": ["你好"] * 65, "sampling_params": {"max_new_tokens": 1}},
        "the request holds 65 prompts, above this server's limit of 64"),
    "/generate n=9": (
        "/generate", {"text": "你好", "sampling_params": {"max_new_tokens": 1, "n": 9}},
        "n = 9 is above this server's limit of 8"),
    "/generate batch x n x max_new_tokens": (
        "/generate", {"input_ids": [[5, 6], [7, 8]], "sampling_params": {"max_new_tokens": 1200, "n": 8}},
        "asks for up to 19200 new tokens (2 prompt(s) x n = 8 x max_tokens)"),
    "best_of, which SGLang ignores": (
        "/v1/completions", {**COMPLETION, "best_of": 3, "max_tokens": 2},
        "best_of = 3 is not supported: SGLang ignores best_of"),
}


@pytest.mark.parametrize("case", OVER_THE_LIMITS)
def test_a_request_above_the_admission_limits_gets_400_naming_the_limit_and_never_runs(server, case):
    path, body, message = OVER_THE_LIMITS[case]
    r = post(server, path, body)
    assert r.status_code == 400 and message in error_message(r), r.text[:400]
    assert nothing_queued_or_running(server.url)  # refused before the scheduler saw it


def test_the_largest_requests_the_limits_allow_are_served(server):
    r = post(server, "/v1/chat/completions", {**CHAT, "n": 8, "max_tokens": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 8, r.text[:300]
    r = post(server, "/generate", {"text": ["你好"] * 64, "sampling_params": {"max_new_tokens": 1}})
    assert r.status_code == 200 and [o["meta_info"]["completion_tokens"] for o in r.json()] == [1] * 64


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {**CHAT, "max_tokens": 4, "temperature": 0.7, "seed": 42}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 4, "seed": 42, "stream": True}),  # the checkpoint's 0.7
    ("/v1/completions", {**COMPLETION, "max_tokens": 4, "seed": 42}),
    ("/generate", {"text": "你好", "sampling_params": {"max_new_tokens": 4, "sampling_seed": 42}}),
])
def test_a_seed_sglang_would_drop_is_refused_saying_why(server, path, body):
    """SGLang applies per-request seeds only with --enable-deterministic-inference (CUDA); without
    it three calls with seed 42 gave three texts."""
    r = post(server, path, body)
    assert r.status_code == 400 and "seed is not honoured by this server" in error_message(r), r.text[:300]
    assert "--enable-deterministic-inference" in error_message(r)


def test_a_seed_with_greedy_decoding_is_accepted_and_the_text_repeats(server):
    texts = []
    for _ in range(2):
        r = post(server, "/v1/chat/completions", {**CHAT, "max_tokens": 8, "temperature": 0, "seed": 1234})
        assert r.status_code == 200, r.text[:300]
        texts.append(r.json()["choices"][0]["message"]["content"])
    assert texts[0] == texts[1] and texts[0]
