"""/v1/completions with echo: the prompt's logprobs (max_tokens 0), refusals, no warning."""

from __future__ import annotations

import pytest

from .replies import (
    COMPLETION,
    error_message,
    post,
)


def test_echo_with_max_tokens_0_returns_the_prompts_logprobs(server):
    """OpenAI's legacy API: the prompt's logprobs and nothing generated (lm-evaluation-harness
    and other log-likelihood clients); the same values as the prompt part of max_tokens 1."""
    prompt = [5, 600, 1200, 37, 99]
    zero = post(server, "/v1/completions", {**COMPLETION, "prompt": prompt, "echo": True, "logprobs": 1,
                                            "max_tokens": 0, "temperature": 0})
    one = post(server, "/v1/completions", {**COMPLETION, "prompt": prompt, "echo": True, "logprobs": 1,
                                           "max_tokens": 1, "temperature": 0})
    assert zero.status_code == 200 and one.status_code == 200, zero.text[:300]
    choice = zero.json()["choices"][0]
    assert zero.json()["usage"]["completion_tokens"] == 0 and choice["finish_reason"] == "length"
    logprobs = choice["logprobs"]["token_logprobs"]
    assert len(logprobs) == len(prompt) and logprobs[0] is None and all(x < 0 for x in logprobs[1:])
    assert logprobs == pytest.approx(one.json()["choices"][0]["logprobs"]["token_logprobs"][:len(prompt)],
                                     abs=1e-4)
    r = post(server, "/v1/completions", {**COMPLETION, "max_tokens": 0})  # without echo: as OpenAI
    assert r.status_code == 400 and "max_tokens: Value error, max_tokens must be positive" in error_message(r)


def test_echo_with_logprobs_0_is_refused_rather_than_answered_without_the_prompts_logprobs(server):
    r = post(server, "/v1/completions", {**COMPLETION, "max_tokens": 1, "echo": True, "logprobs": 0})
    assert r.status_code == 400 and "ask for logprobs = 1" in error_message(r), r.text[:300]


def test_echo_with_logprobs_logs_no_warning(server):
    for _ in range(3):
        assert post(server, "/v1/completions", {**COMPLETION, "max_tokens": 1, "echo": True,
                                                "logprobs": 1}).status_code == 200
    assert "Echo is not compatible with logprobs" not in server.log_path.read_text(errors="replace")
