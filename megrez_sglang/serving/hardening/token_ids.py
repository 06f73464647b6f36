"""4. Prompts and token ids are checked in the tokenizer manager, before the scheduler sees them.

Every route, the frontend language's included, goes through it: a prompt must have at least one
token; its ids (/generate input_ids single and batched, /v1/completions token prompts) and
stop_token_ids must lie in the vocabulary; top_logprobs_num must not exceed its size; request ids
are strings. Upstream checks logit_bias keys and token_ids_logprob only; an out-of-range prompt
id reaches the embedding (IndexError; a device-side assert on CUDA), an out-of-range stop id the
min_new_tokens penalizer's scatter, an empty text prompt (which this tokenizer turns into no
tokens) the MoE router, and a huge top_logprobs_num a top-k: each kills the scheduler and with it
the server. /detokenize checks its ids the same way (upstream: 500).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class PromptTokensError(ValueError):
    """An empty prompt or a token id outside the vocabulary (SGLang answers ValueError with 400)."""


def first_out_of_vocabulary(token_ids: Iterable, vocab_size: int) -> tuple[int, Any] | None:
    for i, token_id in enumerate(token_ids):
        if type(token_id) is not int or not 0 <= token_id < vocab_size:  # noqa: E721 - bool is no id
            return i, token_id
    return None


def check_prompt_tokens(tokenizer_manager, obj, input_ids, *_args, **_kwargs) -> None:
    """BEFORE-hook of TokenizerManager._validate_one_request: runs once per (sub-)request of
    /generate, the OpenAI and Anthropic routes and the frontend language, after tokenization
    and before the request is sent to the scheduler."""
    vocab_size = tokenizer_manager.model_config.vocab_size
    valid = f"valid token ids are 0..{vocab_size - 1}"
    if input_ids is not None:
        if len(input_ids) == 0:
            raise PromptTokensError("the prompt is empty (it has no tokens); send at least one token")
        bad = first_out_of_vocabulary(input_ids, vocab_size)
        if bad is not None:
            raise PromptTokensError(f"input_ids[{bad[0]}] = {bad[1]!r} is not a token id of this model; "
                                    f"{valid}")
    top_logprobs_num = getattr(obj, "top_logprobs_num", None)
    if isinstance(top_logprobs_num, int) and not 0 <= top_logprobs_num <= vocab_size:
        # the scheduler takes a top-k over the vocabulary with k = this
        raise PromptTokensError(f"top_logprobs_num = {top_logprobs_num} is out of range: it must lie "
                                f"in 0..{vocab_size} (the vocabulary size)")
    sampling_params = getattr(obj, "sampling_params", None)
    stop_token_ids = sampling_params.get("stop_token_ids") if isinstance(sampling_params, dict) else None
    if stop_token_ids:
        if not isinstance(stop_token_ids, (list, tuple, set)):
            raise PromptTokensError(f"stop_token_ids must be a list of token ids, got {stop_token_ids!r}")
        bad = first_out_of_vocabulary(stop_token_ids, vocab_size)
        if bad is not None:
            raise PromptTokensError(f"stop_token_ids contains {bad[1]!r}, which is not a token id of this "
                                    f"model; {valid}")


class RequestIdError(ValueError):
    """A request id that is not a string (SGLang answers ValueError with 400)."""


def check_request_ids(tokenizer_manager, obj, *_args, **_kwargs) -> None:
    """BEFORE-hook of TokenizerManager._init_req_state, which files each (sub-)request under its
    id in a dict: an id that is not a string (a list with a single prompt, a number) made that a
    TypeError, answered with 500. Batches have one id per prompt by then (SGLang normalizes them)."""
    single = not hasattr(obj, "is_single") or obj.is_single
    rids = [obj.rid] if single else obj.rid
    for i, rid in enumerate(rids):
        if rid is not None and not isinstance(rid, str):  # None: SGLang assigns one
            where = "rid" if single else f"rid[{i}]"
            hint = " (a list of ids is for a batch of prompts, one id each)" if isinstance(rid, list) else ""
            raise RequestIdError(f"{where} must be a string, got {rid!r}{hint}")


def check_detokenize_tokens(error: str | None, serving, request, *_args, **_kwargs) -> str | None:
    """AFTER-hook of OpenAIServingDetokenize._validate_request (a message there becomes a 400):
    a negative or huge id made the tokenizer raise OverflowError, answered with 500."""
    if error:
        return error
    vocab_size = serving.tokenizer_manager.model_config.vocab_size
    tokens = request.tokens
    rows = tokens if tokens and isinstance(tokens[0], list) else [tokens]
    for row in rows:
        bad = first_out_of_vocabulary(row or [], vocab_size)
        if bad is not None:
            return (f"tokens[{bad[0]}] = {bad[1]!r} is not a token id of this model; valid token ids are "
                    f"0..{vocab_size - 1}")
    return None
