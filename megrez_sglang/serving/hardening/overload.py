"""Load shedding: a bound on the work the server holds, counted in tokens, answered with 429 at once.

Upstream, every request is queued first come, first served: 24 clients each asking for the
largest request the admission limits let through (n 8 x 997 tokens) queued 177 sequences, and a
16-token chat sent meanwhile waited 470 s (idle: 0.29 s), with nothing telling clients to back
off. SGLang's own queue limit (--max-queued-requests) does not do this job: it counts requests,
not their size; the scheduler applies it after tokenization; it answers 503 (not 429) without
Retry-After; and a streamed request has its 200 by then, so the refusal arrives inside the
stream. So this module bounds, before anything else runs:

    work of a request = prompts x (prompt tokens + n x max_tokens)

summed over every generation request admitted and not finished (running or waiting in SGLang).
The prompt's tokens are not known before tokenization: they are counted as its UTF-8 bytes, an
upper bound (a token of a byte-level BPE covers at least one byte), at most the context; an
unset max_tokens counts as the context. A request that would take the sum past the bound gets
429 with Retry-After (seconds until that much work has drained, at the rate work finished
recently; 1 to 60) and a message naming the limit, before its body reaches SGLang (streams:
before the first byte). A request is always admitted when nothing else is in flight, so one
that passes the per-request limits (AdmissionLimits) is never refused forever.

Default bound: the KV pool (max_total_num_tokens): what the admitted requests can ask for fits
the KV cache, so everything admitted runs at once or soon, and nothing waits minutes in a
queue behind it. On the tiny checkpoint's defaults (pool 16,384, context 1,024, --max-n 8) two
of the largest requests (8 x 997 tokens each) and a few short chats are admitted; the rest get
429 at once.

The same parse also refuses (400) a prompt whose length in characters alone proves that it
cannot fit the context, before tokenization (chat messages are tokenized by the routes before
SGLang's own length check, which a 100 MB message reached after 107 s): see
`min_prompt_tokens`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
import unicodedata
from typing import Any

from .admission import server_sizes
from .http_limits import read_body, replay_body, send_json_error

MAX_PENDING_TOKENS_ENV = "MEGREZ_MAX_PENDING_TOKENS"
# Routes that generate, and how their body names things (the frontend language calls /generate).
CHAT_ROUTES = ("/v1/chat/completions", "/api/chat", "/v1/messages")
GENERATE_ROUTES = ("/generate", "/invocations")
COMPLETION_ROUTES = ("/v1/completions", "/api/generate", "/v1/responses")
GENERATION_ROUTES = CHAT_ROUTES + GENERATE_ROUTES + COMPLETION_ROUTES


@dataclasses.dataclass(frozen=True)
class OverloadLimits:
    """max_pending_tokens 0: the server's KV pool (max_total_num_tokens)."""

    max_pending_tokens: int = 0

    @classmethod
    def from_environment(cls) -> OverloadLimits:
        return cls(int(os.environ.get(MAX_PENDING_TOKENS_ENV, 0)))

    def as_environment(self) -> dict[str, str]:
        return {MAX_PENDING_TOKENS_ENV: str(self.max_pending_tokens)}


class WorkBound:
    """The work admitted and not finished, against `limit` (tokens)."""

    RATE_WINDOW_S = 60.0

    def __init__(self, limit: int):
        self.limit = limit
        self.pending = 0
        self.requests = 0
        self._finished: collections.deque[tuple[float, int]] = collections.deque()

    def try_admit(self, work: int) -> bool:
        if self.requests and self.pending + work > self.limit:
            return False
        self.pending += work
        self.requests += 1
        return True

    def release(self, work: int) -> None:
        self.pending -= work
        self.requests -= 1
        now = time.monotonic()
        self._finished.append((now, work))
        while self._finished and self._finished[0][0] < now - self.RATE_WINDOW_S:
            self._finished.popleft()

    def retry_after_s(self, work: int) -> int:
        """Seconds until `work` more would fit, at the rate work finished in the last minute."""
        excess = self.pending + work - self.limit
        if len(self._finished) < 2 or excess <= 0:
            return 1
        span = max(time.monotonic() - self._finished[0][0], 1.0)
        rate = sum(w for _, w in self._finished) / span
        return int(min(60, max(1, math.ceil(excess / rate))))


@dataclasses.dataclass(frozen=True)
class RequestWork:
    """What a generation request asks of the server, read from its JSON body."""

    prompt_chars: list[int]  # characters of each prompt's text (0: token ids)
    prompt_tokens: list[int]  # an upper bound of each prompt's tokens, before the context cap
    n: int
    max_new_tokens: int | None  # None: unset (runs to the end of the context)

    def tokens(self, context_len: int) -> int:
        new = context_len if self.max_new_tokens is None else min(max(self.max_new_tokens, 0), context_len)
        return sum(min(p, context_len) + self.n * new for p in self.prompt_tokens) or self.n * new


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _texts(value: Any) -> list[str]:
    """The text a content value puts into the prompt verbatim: a string, or the "text" of its
    parts (not their type names, which the chat template does not copy)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _texts(item)]
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return [value["text"]]
    return []


def _message_texts(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return []
    return [s for m in messages if isinstance(m, dict) for s in _texts(m.get("content"))]


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None  # noqa: E721 - bool is no count; SGLang validates the rest


def request_work(path: str, body: dict) -> RequestWork:
    if path in CHAT_ROUTES:
        messages = body.get("messages")
        texts = _message_texts(messages) + _texts(body.get("system"))
        chars = sum(map(len, texts))
        framed = _utf8_len(json.dumps(messages, ensure_ascii=False)) if messages is not None else 0
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        max_new = _int_or_none(body.get("max_completion_tokens")) or _int_or_none(body.get("max_tokens")) \
            or _int_or_none(options.get("num_predict"))
        return RequestWork([chars], [framed + _utf8_len("".join(_texts(body.get("system"))))],
                           _int_or_none(body.get("n")) or 1, max_new)
    if path in GENERATE_ROUTES:
        params = body.get("sampling_params")
        first = (params[0] if params else {}) if isinstance(params, list) else params
        first = first if isinstance(first, dict) else {}
        text, input_ids = body.get("text"), body.get("input_ids")
        if text is not None:
            texts = [t for t in ([text] if isinstance(text, str) else text if isinstance(text, list) else [])
                     if isinstance(t, str)]
            chars, tokens = [len(t) for t in texts], [_utf8_len(t) for t in texts]
        elif isinstance(input_ids, list):
            rows = input_ids if input_ids and isinstance(input_ids[0], list) else [input_ids]
            chars, tokens = [0] * len(rows), [len(r) for r in rows]
        else:
            chars, tokens = [], []
        max_new = first.get("max_new_tokens", 128)  # SamplingParams' default
        return RequestWork(chars, tokens, _int_or_none(first.get("n")) or 1,
                           _int_or_none(max_new) if max_new is not None else None)
    # completions: prompt (OpenAI, Ollama) or input (responses)
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):  # noqa: E721
        prompts = [prompt]
    elif isinstance(prompt, list):
        prompts = prompt
    else:
        prompts = []
    chars = [len(p) if isinstance(p, str) else sum(map(len, _message_texts(p))) for p in prompts]
    tokens = [_utf8_len(p) if isinstance(p, str) else len(p) if isinstance(p, list) and all(
        type(t) is int for t in p) else _utf8_len(json.dumps(p, ensure_ascii=False)) for p in prompts]  # noqa: E721
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    if path == "/v1/completions":
        max_new = body.get("max_tokens", 16)  # SGLang's CompletionRequest default
    elif path == "/v1/responses":
        max_new = body.get("max_output_tokens")
    else:
        max_new = options.get("num_predict")
    return RequestWork(chars, tokens, _int_or_none(body.get("n")) or 1,
                       _int_or_none(max_new) if max_new is not None else None)


def tokenizer_bytes_per_token(tokenizer) -> tuple[int, int] | None:
    """(L, D) for `min_prompt_tokens`: the most UTF-8 bytes one token of `tokenizer` stands for
    (special tokens' text included), and the most characters its normalizer turns into one (1
    without a normalizer; NFC composes at most the length of the longest canonical decomposition
    of a code point, 4 in Unicode 15; a combining sequence is one output character per input
    code point or more). None when that cannot be bounded (another normalizer, e.g. one that
    removes characters, or no fast tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    normalizer = json.loads(backend.to_str()).get("normalizer")
    kinds = [n.get("type") for n in normalizer.get("normalizers", [])] if normalizer and \
        normalizer.get("type") == "Sequence" else [normalizer.get("type")] if normalizer else []
    if any(kind not in ("NFC", "NFD") for kind in kinds):
        return None
    composes = longest_canonical_decomposition() if "NFC" in kinds else 1
    vocabulary = tokenizer.get_vocab()
    longest = max(_utf8_len(tokenizer.convert_tokens_to_string([token])) for token in vocabulary)
    longest = max(longest, *(_utf8_len(t) for t in getattr(tokenizer, "all_special_tokens", []) or [""]))
    return max(longest, 1), composes


@functools.cache
def longest_canonical_decomposition() -> int:
    """The most code points NFD turns one code point into (4 in Unicode 15); ~0.3 s, once."""
    return max(len(unicodedata.normalize("NFD", chr(c))) for c in range(0x110000) if not 0xD800 <= c < 0xE000)


def min_prompt_tokens(chars: int, bytes_per_token: int, chars_per_character: int) -> int:
    """The fewest tokens a text of `chars` characters can have: normalization leaves at least
    chars / D characters, each at least one UTF-8 byte, and a token covers at most L bytes."""
    return math.ceil(math.ceil(chars / chars_per_character) / bytes_per_token)


class ServerSizes:
    """The running server's context, KV pool and tokenizer bound, read once it runs."""

    def __init__(self):
        self._loaded = False

    def load(self) -> None:
        if self._loaded:
            return
        from sglang.srt.entrypoints.http_server import get_global_state

        self.context_len, self.kv_pool = server_sizes()
        tokenizer = getattr(get_global_state().tokenizer_manager, "tokenizer", None)
        self.token_bound = tokenizer_bytes_per_token(tokenizer) if tokenizer is not None else None
        self._loaded = True


class GenerationAdmissionMiddleware:
    """ASGI middleware on the generation routes: the prompt's length in characters (400), then
    the work bound (429). Inside BodySizeLimitMiddleware, so the body it reads is bounded."""

    def __init__(self, app, max_pending_tokens: int | None = None):
        self.app = app
        self._max_pending_tokens = max_pending_tokens
        self.sizes = ServerSizes()
        self.bound: WorkBound | None = None

    def _bound(self) -> WorkBound:
        if self.bound is None:
            self.sizes.load()
            limit = self._max_pending_tokens
            if limit is None:
                limit = OverloadLimits.from_environment().max_pending_tokens
            self.bound = WorkBound(limit or self.sizes.kv_pool)
        return self.bound

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATION_ROUTES:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # the client hung up: nobody to answer
        replay = replay_body(body, receive)

        try:
            parsed = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):  # a body nested absurdly deep: body_shape answers it
            parsed = None
        if not isinstance(parsed, dict):  # the routes and JsonObjectBodyMiddleware answer these
            await self.app(scope, replay, send)
            return
        bound = self._bound()
        work = request_work(scope["path"], parsed)
        error = self.prompt_length_error(work)
        if error is not None:
            await send_json_error(send, 400, error)
            return
        tokens = work.tokens(self.sizes.context_len)
        if not bound.try_admit(tokens):
            retry_after = bound.retry_after_s(tokens)
            await send_json_error(send, 429, (
                f"the server is at capacity: the requests it holds may take {bound.pending} tokens, and this "
                f"one up to {tokens} more (prompt + n x max_tokens), above its limit of {bound.limit} "
                "(launch_server.sh --max-pending-tokens; by default the KV pool); retry after "
                f"{retry_after} s"), headers=[(b"retry-after", str(retry_after).encode())])
            return
        try:
            await self.app(scope, replay, send)
        finally:
            bound.release(tokens)

    def prompt_length_error(self, work: RequestWork) -> str | None:
        if self.sizes.token_bound is None:
            return None
        per_token, composes = self.sizes.token_bound
        for chars in work.prompt_chars:
            fewest = min_prompt_tokens(chars, per_token, composes)
            if fewest > self.sizes.context_len:
                return (f"the prompt has {chars} characters, so at least {fewest} tokens (a token of this "
                        f"model covers at most {per_token} bytes), more than the model's context length "
                        f"of {self.sizes.context_len} tokens; shorten it")
        return None
