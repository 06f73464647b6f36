"""/v1/completions with echo: max_tokens 0 scores the prompt (OpenAI's legacy API), and SGLang's
warning on every echo-with-logprobs request is filtered.
"""

from __future__ import annotations

import json
import logging

PROMPT_LOGPROBS_ONLY = "megrez_prompt_logprobs_only"  # key in the request's scope["state"]


def prompt_logprobs_only(body: bytes, scope) -> bytes:
    """A /v1/completions body with echo and max_tokens 0 (OpenAI's legacy API: the prompt's
    logprobs, nothing generated) is one SGLang's request model refuses ("max_tokens must be
    positive") before any code of ours runs: it goes on with max_tokens 1 and a mark in the
    request's state, and zero_new_tokens_for_echo() asks SGLang for no new token."""
    if b'"echo"' not in body:
        return body
    try:
        request = json.loads(body)
    except ValueError:
        return body
    if not (isinstance(request, dict) and request.get("echo") is True and request.get("max_tokens") == 0
            and type(request["max_tokens"]) is int):  # noqa: E721 - 0.0 and false are not 0
        return body
    scope.setdefault("state", {})[PROMPT_LOGPROBS_ONLY] = True
    return json.dumps({**request, "max_tokens": 1}).encode()


def zero_new_tokens_for_echo(result, _serving, _request, raw_request=None, *_args, **_kwargs):
    """AFTER-hook of OpenAIServingCompletion._convert_to_internal_request: see prompt_logprobs_only."""
    if raw_request is not None and raw_request.scope.get("state", {}).get(PROMPT_LOGPROBS_ONLY):
        adapted, _ = result
        for params in adapted.sampling_params if isinstance(adapted.sampling_params, list) else \
                [adapted.sampling_params]:
            params["max_new_tokens"] = 0
    return result


class EchoWithLogprobsWarning(logging.Filter):
    """SGLang warns "Echo is not compatible with logprobs" on every /v1/completions request with
    echo and logprobs, then returns the prompt's logprobs all the same (lm-evaluation-harness's
    log-likelihood requests are all such requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Echo is not compatible with logprobs")
