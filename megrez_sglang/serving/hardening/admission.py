"""10. Admission limits: one request asks for at most MEGREZ_MAX_N samples of a prompt,
MEGREZ_MAX_PROMPTS prompts and MEGREZ_MAX_REQUEST_TOKENS new tokens in all (AdmissionLimits);
upstream one chat with n = 25000 kept every other request waiting for minutes. Also refused
here, before anything runs: empty prompt lists, a malformed input_embeds, and seed, best_of and
echo with logprobs 0, which SGLang takes and drops.
"""

from __future__ import annotations

import dataclasses
import os

MAX_N_ENV = "MEGREZ_MAX_N"
MAX_PROMPTS_ENV = "MEGREZ_MAX_PROMPTS"
MAX_REQUEST_TOKENS_ENV = "MEGREZ_MAX_REQUEST_TOKENS"
# samples per prompt (OpenAI's n): with 8 on a 2-core CPU a concurrent chat takes 1.7x its idle
# time while the largest admitted request runs, with 16 2.2x (BENCHMARKS.md, bench.admission)
DEFAULT_MAX_N = 8
DEFAULT_MAX_PROMPTS = 64  # prompts in one request (/generate and /v1/completions lists)


@dataclasses.dataclass(frozen=True)


class AdmissionLimits:
    """What one request may ask for. Upstream SGLang takes any n: one chat with "n": 25000 kept
    every other request waiting for minutes. A request is refused (400, naming the limit) when
    it asks for more than `max_n` samples of a prompt, more than `max_prompts` prompts, or more
    new tokens than `max_request_tokens` in all (prompts x n x max_tokens; a max_tokens left unset
    counts as the most SGLang would let one sequence grow: the context length, at most the KV
    pool). 0 for max_request_tokens: the server's KV pool (max_total_num_tokens)."""

    max_n: int = DEFAULT_MAX_N
    max_prompts: int = DEFAULT_MAX_PROMPTS
    max_request_tokens: int = 0

    @classmethod
    def from_environment(cls) -> AdmissionLimits:
        return cls(int(os.environ.get(MAX_N_ENV, DEFAULT_MAX_N)),
                   int(os.environ.get(MAX_PROMPTS_ENV, DEFAULT_MAX_PROMPTS)),
                   int(os.environ.get(MAX_REQUEST_TOKENS_ENV, 0)))

    def as_environment(self) -> dict[str, str]:
        return {MAX_N_ENV: str(self.max_n), MAX_PROMPTS_ENV: str(self.max_prompts),
                MAX_REQUEST_TOKENS_ENV: str(self.max_request_tokens)}

    def error(self, prompts: int, n: int, max_new_tokens: list[int | None], context_len: int,
              kv_pool: int) -> str | None:
        """Why a request of `prompts` prompts, `n` samples each, and these max_new_tokens (one per
        prompt; None: unset) is refused, or None."""
        if n > self.max_n:
            return (f"n = {n} is above this server's limit of {self.max_n} samples per prompt "
                    f"(launch_server.sh --max-n); send several requests instead")
        if prompts > self.max_prompts:
            return (f"the request holds {prompts} prompts, above this server's limit of {self.max_prompts} "
                    "per request (launch_server.sh --max-prompts); split it")
        budget = self.max_request_tokens or kv_pool
        unset = min(context_len, kv_pool)
        asked = n * sum(unset if m is None else m for m in max_new_tokens)
        if asked > budget:
            per = "max_tokens" if all(m is not None for m in max_new_tokens) else \
                f"max_tokens (unset counts as {unset}: the context length, at most the KV pool)"
            return (f"the request asks for up to {asked} new tokens ({prompts} prompt(s) x n = {n} x {per}), "
                    f"above this server's limit of {budget} per request (launch_server.sh "
                    f"--max-request-tokens{'' if self.max_request_tokens else '; by default its KV pool'}); "
                    "lower n or max_tokens")
        return None


def server_sizes() -> tuple[int, int]:
    """(context length, KV pool size in tokens) of the server running in this process; the one
    place the hardening reads them (admission limits, the work bound, the body-size default)."""
    from sglang.srt.entrypoints.http_server import get_global_state

    state = get_global_state()
    manager = state.tokenizer_manager
    return manager.context_len, state.scheduler_info.get("max_total_num_tokens") or manager.context_len


SEED_NOT_HONOURED = (
    "seed is not honoured by this server: SGLang samples with a per-request seed only when it runs with "
    "--enable-deterministic-inference (launch_server.sh MODEL -- --enable-deterministic-inference; CUDA "
    "attention backends only). Leave seed out to sample without one; at temperature 0 the output is "
    "the same every time, seed or not")


def seeds_honoured(server_args) -> bool:
    """SGLang applies a request's seed (sampling_seed) only in its deterministic-inference mode;
    otherwise it drops it without a word (three calls with seed 42 gave three texts)."""
    return bool(getattr(server_args, "enable_deterministic_inference", False))


def samples(temperature: float | None, top_k: int | None) -> bool:
    """Whether SGLang samples (rather than takes the likeliest token) at these settings: it decodes
    greedily at a temperature below 1e-6 or with top_k 1; an unset temperature is the
    checkpoint's default (generation_config.json) or 1."""
    return not (temperature is not None and 0 <= temperature < 1e-6) and top_k != 1


class AdmissionError(ValueError):
    """A request above the admission limits (SGLang answers ValueError with 400)."""


def _count(value, is_one) -> int:
    """How many prompts a text / input_ids / input_embeds field holds (0: absent)."""
    if value is None:
        return 0
    return 1 if is_one(value) else len(value)


def check_generation_request(tokenizer_manager, obj, *_args, **_kwargs) -> None:
    """BEFORE-hook of TokenizerManager.generate_request, which every generation and encoding
    route calls (/generate, the OpenAI and Ollama routes, /vertex_generate, /encode, /classify,
    the frontend language) before it splits the request: an empty list of prompts and a
    malformed input_embeds made that split fail (IndexError, 500); a seed SGLang would drop
    (seeds_honoured); then the request's size against the admission limits."""
    from sglang.srt.managers.io_struct import GenerateReqInput

    for field in ("text", "input_ids", "input_embeds"):
        if getattr(obj, field, None) == []:
            raise ValueError(f"{field} is an empty list: send at least one prompt")
    if not isinstance(obj, GenerateReqInput):
        return
    check_input_embeds(obj.input_embeds, tokenizer_manager.model_config.hidden_size)
    prompts = max(_count(obj.text, lambda t: isinstance(t, str)),
                  _count(obj.input_ids, lambda ids: not ids or not isinstance(ids[0], list)),
                  _count(obj.input_embeds, lambda e: not e or not isinstance(e[0][0], list)), 1)
    params = obj.sampling_params
    per_prompt = params if isinstance(params, list) else [params or {}] * prompts
    if not seeds_honoured(tokenizer_manager.server_args) and any(
            p.get("sampling_seed") is not None and samples(p.get("temperature", 1.0), p.get("top_k"))
            for p in per_prompt):
        raise ValueError(SEED_NOT_HONOURED)
    n = max((p.get("n") or 1 for p in per_prompt), default=1)
    # /generate's default is SamplingParams' 128; OpenAI routes pass None when max_tokens is unset
    max_new = [p.get("max_new_tokens", 128) for p in per_prompt]
    error = AdmissionLimits.from_environment().error(prompts, n, max_new, *server_sizes())
    if error:
        raise AdmissionError(error)


def check_openai_request(error: str | None, serving, request, *_args, **_kwargs) -> str | None:
    """AFTER-hook of the OpenAI chat and completions servings' _validate_request (a message there
    becomes a 400 before a stream starts; check_generation_request alone would refuse a streamed
    request inside its 200 stream): the admission limits, and fields SGLang takes without doing
    what they ask (seed, best_of, echo with logprobs 0)."""
    if error:
        return error
    if getattr(request, "echo", False) and getattr(request, "logprobs", None) == 0:
        return ("echo with logprobs = 0 returns no logprobs for the prompt in SGLang; ask for logprobs = 1 "
                "(the prompt's logprobs and the top alternative at each position)")
    seeded = getattr(request, "seed", None) is not None
    if seeded and samples(request.temperature, getattr(request, "top_k", None)) and \
            not seeds_honoured(serving.tokenizer_manager.server_args):
        return SEED_NOT_HONOURED
    best_of = getattr(request, "best_of", None)
    if best_of not in (None, 1):
        return (f"best_of = {best_of} is not supported: SGLang ignores best_of; ask for n samples and "
                "choose among them by their logprobs")
    prompt = getattr(request, "prompt", None)
    prompts = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else 1
    max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens
    return AdmissionLimits.from_environment().error(prompts, request.n or 1, [max_tokens] * prompts,
                                                    *server_sizes())


def check_input_embeds(input_embeds, hidden_size: int) -> None:
    """input_embeds, if given, is one prompt (a list of vectors) or a batch of them, each vector
    `hidden_size` numbers: an empty one made SGLang's batch-size detection fail (500)."""
    if input_embeds is None:
        return
    if not isinstance(input_embeds, list) or not input_embeds:
        raise ValueError("input_embeds must be a non-empty list of vectors (one per prompt position), "
                         "or a list of such lists")
    batch = input_embeds if isinstance(input_embeds[0], list) and input_embeds[0] and \
        isinstance(input_embeds[0][0], list) else [input_embeds]
    for i, prompt in enumerate(batch):
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(f"input_embeds[{i}] is empty: a prompt needs at least one position")
        for j, vector in enumerate(prompt):
            if not isinstance(vector, list) or len(vector) != hidden_size:
                where = f"input_embeds[{i}][{j}]" if len(batch) > 1 else f"input_embeds[{j}]"
                size = len(vector) if isinstance(vector, list) else type(vector).__name__
                raise ValueError(f"{where} has {size} values; each position is a vector of this model's "
                                 f"hidden size, {hidden_size}")
