"""What this project changes in SGLang 0.5.23's HTTP server, and why.

SGLang's server as released lets one request stop it, prints its API key, and gives every key
holder the control endpoints. The supervisor (server.py, launch_server.sh) and any other launcher
of `sglang serve` (e.g. a multi-replica cluster) ask for the changes below by starting the server
with `hardened_server_environment()`; this package's SGLang plugin (registration.register) then
calls `install()` in every SGLang process. A bare `sglang serve` or an in-process `sglang.Engine`
is left exactly as upstream ships it.

1. Keys travel in the environment, never in argv: MEGREZ_API_KEY / MEGREZ_ADMIN_API_KEY are read
   into ServerArgs.api_key / admin_api_key right after SGLang parses its command line, then
   removed from os.environ so the scheduler and detokenizer (which run model code) never inherit
   them. (The server process's own /proc/<pid>/environ still holds them: readable by its owner
   only, like the rest of its memory.)
2. Keys are redacted from ServerArgs.resolved_dict(), which is what SGLang logs at start-up and
   what /server_info and /get_server_info return (top level, and the scheduler's internal_states).
3. Control endpoints need the admin key: every endpoint SGLang marks ADMIN_OPTIONAL is marked
   ADMIN_FORCE, so SGLang's own auth middleware answers 403 to everyone while no admin key is
   configured, and accepts only the admin key otherwise (upstream, a server with only --api-key
   lets the user key swap weights or pause generation). The middleware's route lookup also
   looks inside included routers: with FastAPI 0.165 it found no mark on /scale_elastic_ep and
   /is_scaling_elastic_ep, which upstream were open to any caller.
4. Prompts and token ids are checked in the tokenizer manager, before the scheduler sees them
   (every route, the frontend language's included, goes through it): a prompt must have at least
   one token; its ids (/generate input_ids single and batched, /v1/completions token prompts) and
   stop_token_ids must lie in the vocabulary; top_logprobs_num must not exceed its size. Upstream
   checks logit_bias keys and token_ids_logprob only; an out-of-range prompt id reaches the
   embedding (IndexError; a device-side assert on CUDA), an out-of-range stop id the
   min_new_tokens penalizer's scatter, an empty text prompt (which this tokenizer turns into no
   tokens) the MoE router, and a huge top_logprobs_num a top-k: each kills the scheduler and
   with it the server. /detokenize checks its ids the same way (upstream: 500).
5. A JSON body must be an object: a list, string, number or null reaches pydantic validators that
   call dict methods on it, and the server answers 500 instead of 400. Endpoints that parse their
   body themselves answer an empty or invalid body with 400 too (upstream: 500). Two fields
   upstream takes on trust get 400 naming them (upstream: 500): a request id that is not a string
   (e.g. a list of ids with one prompt), and /vertex_generate's `parameters`, which become
   /generate's keyword arguments (an unknown one, e.g. max_new_tokens outside sampling_params,
   was a TypeError).
6. Websocket connections (/v1/realtime) are authenticated like HTTP requests: SGLang's auth
   middleware only looks at HTTP requests. (Without a websocket library installed, as in this
   project's environment, uvicorn does not upgrade connections at all.)
7. The post-warmup GC freeze runs in-process instead of through POST /freeze_gc, which is now
   admin-only.
8. SIGTERM drains with a deadline: SGLang stops taking health checks and waits for the requests
   in flight, with no limit. Whatever still runs MEGREZ_DRAIN_TIMEOUT_S seconds after SIGTERM is
   aborted (streams end with finish_reason "abort"), so the server stops on its own, exit 0.
9. Client errors SGLang answered with 500, and its error messages: a ValueError escaping a route
   (SGLang's own signal for a bad request, which its /generate and OpenAI routes answer with 400)
   is a 400 everywhere; an empty list of prompts, an empty input_embeds vector, an unknown
   tool-call or reasoning parser, and a body nested deeper than MAX_JSON_DEPTH get 400 naming
   them; validation errors read "field: problem" instead of Python reprs with the server's file
   path; Ollama's routes cap an unset num_predict to the context (SGLang asked for 2048 tokens)
   and fail before their stream starts; seed, best_of and echo with logprobs 0, which SGLang
   takes and drops, are refused saying so; echo with max_tokens 0 scores the prompt.
10. Admission limits: one request asks for at most MEGREZ_MAX_N samples of a prompt,
   MEGREZ_MAX_PROMPTS prompts and MEGREZ_MAX_REQUEST_TOKENS new tokens in all (AdmissionLimits);
   upstream one chat with n = 25000 kept every other request waiting for minutes.
11. Overload and connection limits, in modules of their own: the work all admitted requests may
   take, in tokens (overload.py: 429 with Retry-After); body size, time to send a request and
   open connections (http_limits.py: 413, 408, 503); /metrics counting what was answered and
   disconnects apart (http_metrics.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
import pkgutil
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from megrez_sglang.http_limits import ConnectionLimits
from megrez_sglang.overload import OverloadLimits

logger = logging.getLogger(__name__)

API_KEY_ENV = "MEGREZ_API_KEY"
ADMIN_API_KEY_ENV = "MEGREZ_ADMIN_API_KEY"
# Set by launchers in the server's environment (not a secret: children inherit it).
HARDENING_ENV = "MEGREZ_HARDENED_SERVER"
DRAIN_TIMEOUT_ENV = "MEGREZ_DRAIN_TIMEOUT_S"
DEFAULT_DRAIN_TIMEOUT_S = 30.0
KEY_FIELDS = {"api_key": API_KEY_ENV, "admin_api_key": ADMIN_API_KEY_ENV}
REDACTED = "<redacted>"


class KeyConfigurationError(ValueError):
    """MEGREZ_API_KEY / MEGREZ_ADMIN_API_KEY are set in a way that would not protect anything."""


def environment_keys(base: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(MEGREZ_API_KEY, MEGREZ_ADMIN_API_KEY) from `base` (default os.environ), checked; an empty
    value means no key (`MEGREZ_API_KEY= ./launch_server.sh`)."""
    env = os.environ if base is None else base
    api_key, admin_key = env.get(API_KEY_ENV) or None, env.get(ADMIN_API_KEY_ENV) or None
    for name, value in ((API_KEY_ENV, api_key), (ADMIN_API_KEY_ENV, admin_key)):
        if value is not None and not value.strip():
            raise KeyConfigurationError(f"{name} is blank: unset it, or set a key")
        if value is not None and value != value.strip():
            raise KeyConfigurationError(f"{name} has leading or trailing whitespace; clients would "
                                        "have to send it verbatim in the Authorization header")
    if api_key and admin_key and api_key == admin_key:
        raise KeyConfigurationError(f"{ADMIN_API_KEY_ENV} equals {API_KEY_ENV}: every user would be "
                                    "an administrator; choose a different admin key")
    return api_key, admin_key


def hardened_server_environment(base: Mapping[str, str] | None = None, *,
                                drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                                limits: AdmissionLimits | None = None,
                                overload: OverloadLimits | None = None,
                                connections: ConnectionLimits | None = None) -> dict[str, str]:
    """The environment to start `sglang serve` with: `base` (default os.environ), with the keys it
    holds checked, the switch that makes this package's plugin harden the server, how long
    requests in flight may run after SIGTERM, what one request may ask for, what all of them
    together may hold, and what one connection may."""
    env = dict(os.environ if base is None else base)
    keys = environment_keys(env)
    for name, value in zip((API_KEY_ENV, ADMIN_API_KEY_ENV), keys, strict=True):
        if value is None:
            env.pop(name, None)
    env[HARDENING_ENV] = "1"
    env[DRAIN_TIMEOUT_ENV] = str(drain_timeout_s)
    env.update((limits or AdmissionLimits()).as_environment())
    env.update((overload or OverloadLimits()).as_environment())
    env.update((connections or ConnectionLimits()).as_environment())
    return env


def requested() -> bool:
    return os.environ.get(HARDENING_ENV) == "1"


# ---------------------------------------------------------------------------------------------
# 1-2. keys


def keys_from_environment(server_args, *_args, **_kwargs):
    """AFTER-hook of sglang.srt.server_args.prepare_server_args (server main process): the keys
    from the environment, which the child processes then do not inherit."""
    for field, env_name in KEY_FIELDS.items():
        value = os.environ.pop(env_name, None)
        if value:
            if getattr(server_args, field):
                raise KeyConfigurationError(
                    f"both {env_name} and --{field.replace('_', '-')} are given; pass the key in "
                    f"{env_name} only (a command-line flag is visible to every local user in ps)")
            setattr(server_args, field, value)
    return server_args


def redact_keys(resolved: dict[str, Any], *_args, **_kwargs) -> dict[str, Any]:
    """AFTER-hook of ServerArgs.resolved_dict (every process): what SGLang logs and serves."""
    for field in KEY_FIELDS:
        if resolved.get(field):
            resolved[field] = REDACTED
    return resolved


# ---------------------------------------------------------------------------------------------
# 3. control endpoints


def iter_routes(routes: Iterable) -> Iterator:
    """Every route of a Starlette/FastAPI route list, looking inside included routers (FastAPI
    0.165 keeps `app.include_router(...)` routes behind an _IncludedRouter)."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            yield from iter_routes(original.routes)
        else:
            yield route


def require_admin_key_for_control_endpoints(app) -> list[str]:
    """Mark every endpoint SGLang declares ADMIN_OPTIONAL as ADMIN_FORCE. SGLang then installs its
    auth middleware even without keys (it does whenever an ADMIN_FORCE endpoint exists). Returns
    the paths marked."""
    from sglang.srt.utils.auth import AuthLevel

    marked = []
    for route in iter_routes(app.routes):
        endpoint = getattr(route, "endpoint", None)
        if getattr(endpoint, "_auth_level", None) in (AuthLevel.ADMIN_OPTIONAL, AuthLevel.ADMIN_FORCE):
            endpoint._auth_level = AuthLevel.ADMIN_FORCE
            marked.append(route.path)
    return marked


def auth_level_of_request(app, scope):
    """REPLACE-hook of sglang.srt.utils.auth._get_auth_level_from_app_and_scope. SGLang asks
    each top-level route whether it matches; for an included router FastAPI 0.165 answers with
    a wrapper endpoint that lost SGLang's mark, so those control endpoints counted as NORMAL.
    The same question, asked of every route (included ones too)."""
    from sglang.srt.utils.auth import AuthLevel
    from starlette.routing import Match

    for route in iter_routes(app.routes):
        try:
            match, _ = route.matches(scope)
        except Exception:  # noqa: BLE001 - as SGLang's lookup: a route that cannot tell is skipped
            continue
        if match == Match.FULL:
            level = getattr(getattr(route, "endpoint", None), "_auth_level", None)
            return level if isinstance(level, AuthLevel) else AuthLevel.NORMAL
    return AuthLevel.NORMAL


def freeze_gc_in_process(server_args, *_args, **_kwargs) -> None:
    """REPLACE-hook of http_server._freeze_gc_after_server_warmup: SGLang freezes the GC of every
    process after warm-up by POSTing /freeze_gc with whatever key it has; with that endpoint
    admin-only and no admin key that would be refused, so run the same call on the tokenizer
    manager's event loop (this runs in SGLang's warm-up thread)."""
    from sglang.srt.entrypoints.http_server import get_global_state

    manager = get_global_state().tokenizer_manager
    try:
        asyncio.run_coroutine_threadsafe(manager.freeze_gc(), manager.event_loop).result(timeout=30)
    except Exception:  # noqa: BLE001 - an optimisation; SGLang itself only warns here
        logger.warning("post-warmup freeze_gc failed", exc_info=True)


# ---------------------------------------------------------------------------------------------
# 4. token ids


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


# ---------------------------------------------------------------------------------------------
# 5. body shape


def _is_json_content(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json" or media_type.endswith(b"+json")
    return True  # FastAPI parses a body without a content type as JSON


class JsonObjectBodyMiddleware:
    """ASGI middleware: a POST/PUT/PATCH whose JSON body is not an object gets 400 naming what it
    got. An empty or unparsable body is left to FastAPI, which answers those with 400 itself.
    ASGI (not Starlette's BaseHTTPMiddleware) so that client disconnects still reach SGLang."""

    METHODS = ("POST", "PUT", "PATCH")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in self.METHODS or not _is_json_content(
                scope.get("headers", [])):
            await self.app(scope, receive, send)
            return
        chunks, message = [], {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # nobody to answer
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
        error = self.body_error(body)
        if error is None and scope["path"] == vertex_route():
            error = vertex_request_error(body)
        if error is not None:
            await self._reject(send, error)
            return
        if scope["path"] == "/v1/completions":
            body = prompt_logprobs_only(body, scope)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def body_error(body: bytes) -> str | None:
        if nests_deeper_than(body, MAX_JSON_DEPTH):
            return (f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; "
                    "no request of this API needs that")
        stripped = body.lstrip()
        if not stripped or stripped[:1] == b"{":
            return None
        try:
            value = json.loads(stripped)
        except ValueError:
            return None
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number")
        return f"the request body must be a JSON object, got {kind}"

    @staticmethod
    async def _reject(send, message: str) -> None:
        payload = json.dumps(bad_request_content(message)).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


# Python's json (FastAPI's parser) recurses once per level and raises RecursionError (500) near
# 1000; the deepest bodies this API takes (JSON schemas, tool parameters) need a few dozen.
MAX_JSON_DEPTH = 128
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether a JSON text opens more than `limit` arrays/objects inside one another (brackets
    inside strings do not count); linear, and no recursion."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _JSON_STRING.sub(b"", body).translate(None, _NOT_A_BRACKET):
        depth += 1 if bracket in b"[{" else -1
        if depth > limit:
            return True
    return False


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


def vertex_route() -> str:
    return os.environ.get("AIP_PREDICT_ROUTE", "/vertex_generate")  # as SGLang's http_server


# /vertex_generate passes these to GenerateReqInput itself, from the instances.
VERTEX_INSTANCE_FIELDS = ("text", "input_ids", "input_embeds", "image_data")


def vertex_request_error(body: bytes) -> str | None:
    """What is wrong with a /vertex_generate body that SGLang would answer with 500: the endpoint
    calls GenerateReqInput(**inputs, image_data=..., **parameters), so `parameters` must be an
    object of /generate's fields other than the inputs."""
    try:
        request = json.loads(body)
    except ValueError:
        return None  # FastAPI answers an unparsable body with 400
    parameters = request.get("parameters") if isinstance(request, dict) else None
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        return f"parameters must be an object of /generate's fields, got {parameters!r}"
    from sglang.srt.managers.io_struct import GenerateReqInput

    fields = {f.name for f in dataclasses.fields(GenerateReqInput) if f.init}
    unknown = sorted(set(parameters) - fields)
    if unknown:
        return (f"parameters has fields /generate does not take: {', '.join(unknown)} (sampling settings "
                'go in parameters.sampling_params, e.g. {"sampling_params": {"max_new_tokens": 16}})')
    inputs = sorted(set(parameters) & set(VERTEX_INSTANCE_FIELDS))
    if inputs:
        return f"parameters must not hold {', '.join(inputs)}: the prompts and images go in instances"
    return None


class WebSocketAuthMiddleware:
    """ASGI middleware: refuse a websocket handshake (close code 1008, which uvicorn turns into
    HTTP 403) that SGLang's auth rules would refuse as an HTTP request to the same path.
    `keys()` returns (api_key, admin_api_key)."""

    def __init__(self, app, keys=None):
        self.app = app
        self.keys = keys or _configured_keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            from sglang.srt.utils.auth import AuthLevel, decide_request_auth

            api_key, admin_api_key = self.keys()
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            decision = decide_request_auth(
                method="GET", path=scope["path"], authorization_header=authorization, api_key=api_key,
                admin_api_key=admin_api_key, auth_level=AuthLevel.NORMAL)
            if not decision.allowed:
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


def _configured_keys() -> tuple[str | None, str | None]:
    from sglang.srt.runtime_context import get_serving

    serving = get_serving()
    return serving.api_key, serving.admin_api_key


def bad_request_content(message: str) -> dict[str, Any]:
    """The shape of SGLang's own 400s (its OpenAI protocol ErrorResponse)."""
    return {"object": "error", "message": message, "type": "BadRequest", "param": None, "code": 400}


async def invalid_json_body(request, exc: json.JSONDecodeError):
    """Exception handler: an endpoint that calls `await request.json()` itself (e.g.
    /add_external_corpus) on an empty or invalid body."""
    from fastapi.responses import JSONResponse

    return JSONResponse(bad_request_content(f"the request body is not valid JSON: {exc}"), status_code=400)


# ---------------------------------------------------------------------------------------------
# 8. shutdown


def sigterm_with_drain_deadline(sigterm_handler, signal_handler, *args, **kwargs):
    """AROUND-hook of tokenizer_manager.SignalHandler.sigterm_handler, which SGLang runs on the
    tokenizer manager's event loop: SGLang's drain (sigterm_watchdog) waits while any request is
    in flight; abort what is left at the deadline, and the drain then ends by itself."""
    sigterm_handler(signal_handler, *args, **kwargs)
    manager = signal_handler.tokenizer_manager
    deadline_s = float(os.environ.get(DRAIN_TIMEOUT_ENV, DEFAULT_DRAIN_TIMEOUT_S))

    def abort_what_is_left():
        if manager.rid_to_state:
            logger.warning("%d requests still running %.0f s after SIGTERM: aborting them",
                           len(manager.rid_to_state), deadline_s)
            manager.abort_request(abort_all=True)

    manager.event_loop.call_later(deadline_s, abort_what_is_left)


# ---------------------------------------------------------------------------------------------
# 9. client errors answered with 500, and error messages


def client_error(request, exc: ValueError):
    """Exception handler for ValueError: SGLang's request handlers signal a bad request with it
    (its /generate and OpenAI routes answer it with 400); the routes that do not catch it
    (/api/chat, /api/generate, /parse_function_call, /separate_reasoning) answered 500."""
    from fastapi.responses import JSONResponse

    return JSONResponse(bad_request_content(str(exc) or type(exc).__name__), status_code=400)


MAX_VALIDATION_ERRORS_SHOWN = 5


def validation_message(errors: list[dict]) -> str:
    """pydantic's errors as "field: problem" (e.g. "messages[0].content: Field required"); SGLang's
    message was str() of FastAPI's exception: Python reprs, the input echoed back, and the server's
    file path and line."""
    parts = []
    for error in errors:
        loc = list(error.get("loc", ()))
        where = ""
        for part in loc[1:] if loc[:1] == ["body"] else loc:
            if isinstance(part, int):
                where += f"[{part}]"
            elif not _UNION_MEMBER.search(str(part)):  # which alternative of a union pydantic tried
                where += f".{part}" if where else str(part)
        part = f"{where or 'the request body'}: {error.get('msg', 'invalid')}"
        if part not in parts:
            parts.append(part)
    shown = parts[:MAX_VALIDATION_ERRORS_SHOWN]
    if len(parts) > len(shown):
        shown.append(f"and {len(parts) - len(shown)} more")
    return "; ".join(shown) or "the request is invalid"


# pydantic's names for union members in an error's location: "str", "list[int]",
# "function-after[validator(), Model]", "ChatCompletionMessageUserParam"
_UNION_MEMBER = re.compile(r"[\[\]()]|^[A-Z]|^(str|int|float|bool|dict|list|none|null)$")


def validation_error_handler(sglang_handler):
    """Exception handler for RequestValidationError (400, as SGLang's) with validation_message();
    /v1/messages (Anthropic's envelope) and /v1/systemone (its documented 422) keep SGLang's own,
    which leave the path out already."""

    async def handler(request, exc):
        from fastapi.responses import JSONResponse

        path = request.url.path.removeprefix(request.scope.get("root_path", ""))
        if path.startswith("/v1/messages") or path == "/v1/systemone":
            return await sglang_handler(request, exc)
        message = validation_message(exc.errors())
        if path.startswith("/v1/responses"):
            return JSONResponse({"error": {"message": message, "type": "Bad Request", "param": None,
                                           "code": 400}}, status_code=400)
        return JSONResponse(bad_request_content(message), status_code=400)

    return handler


def check_tool_call_parser(parser, *args, **kwargs) -> None:
    """BEFORE-hook of FunctionCallParser.__init__ (/parse_function_call names the parser in its
    body): the condition SGLang raises on, with the names it knows."""
    name = kwargs.get("tool_call_parser", args[1] if len(args) > 1 else None)
    known = type(parser).ToolCallParserEnum
    if name not in known:
        raise ValueError(f"tool_call_parser {name!r} is not a parser this server knows; one of: "
                         f"{', '.join(sorted(known))}")


def check_reasoning_parser(parser, *args, **kwargs) -> None:
    """BEFORE-hook of ReasoningParser.__init__ (/separate_reasoning names it in its body)."""
    name = kwargs.get("model_type", args[0] if args else None)
    known = type(parser).DetectorMap
    if not isinstance(name, str) or name.lower() not in known:
        raise ValueError(f"reasoning_parser {name!r} is not a parser this server knows; one of: "
                         f"{', '.join(sorted(known))}")


def ollama_sampling_params(params: dict, _serving, options: dict | None = None, *_args, **_kwargs) -> dict:
    """AFTER-hook of OllamaServing._convert_options_to_sampling_params. Without options.num_predict
    SGLang asked for 2048 new tokens whatever the context (above it: 500, or a stream that broke
    off); unset, SGLang caps a reply to what the context leaves, as /v1/* do without max_tokens.
    Ollama's `seed` is SGLang's sampling_seed (as `seed` it was an unknown sampling parameter)."""
    if not options or options.get("num_predict") is None:
        params["max_new_tokens"] = None
    if "seed" in params:
        params["sampling_seed"] = params.pop("seed")
    return params


async def first_chunk_before_the_response(original, *args, **kwargs):
    """AROUND-hook of OllamaServing's _stream_*_response: the stream's first chunk is computed
    before the response starts, so that a request SGLang refuses (a ValueError: the prompt is too
    long, a parameter out of range) is answered 400 instead of a 200 stream that breaks off."""
    response = await original(*args, **kwargs)
    chunks = response.body_iterator
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        return response

    async def the_whole_stream():
        yield first
        async for chunk in chunks:
            yield chunk

    response.body_iterator = the_whole_stream()
    return response


class EchoWithLogprobsWarning(logging.Filter):
    """SGLang warns "Echo is not compatible with logprobs" on every /v1/completions request with
    echo and logprobs, then returns the prompt's logprobs all the same (lm-evaluation-harness's
    log-likelihood requests are all such requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Echo is not compatible with logprobs")


# ---------------------------------------------------------------------------------------------
# 10. admission limits

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


def _server_sizes(tokenizer_manager) -> tuple[int, int]:
    """(context length, KV pool size in tokens) of the running server."""
    from sglang.srt.entrypoints.http_server import get_global_state

    pool = get_global_state().scheduler_info.get("max_total_num_tokens") or tokenizer_manager.context_len
    return tokenizer_manager.context_len, pool


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
    error = AdmissionLimits.from_environment().error(prompts, n, max_new, *_server_sizes(tokenizer_manager))
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
                                                    *_server_sizes(serving.tokenizer_manager))


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


# ---------------------------------------------------------------------------------------------


def _hook(target: str, hook, hook_type) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry

    pkgutil.resolve_name(target)  # HookRegistry only logs a missing target: fail here instead
    HookRegistry.register(target, hook, hook_type)


def install() -> None:
    """Called by the SGLang plugin in every SGLang process when a launcher asked for it."""
    from sglang.srt.plugins.hook_registry import HookType

    _hook("sglang.srt.server_args.ServerArgs.resolved_dict", redact_keys, HookType.AFTER)
    if multiprocessing.parent_process() is not None:
        return  # a scheduler or detokenizer: the HTTP server and tokenizer manager live in the main process
    _hook("sglang.srt.server_args.prepare_server_args", keys_from_environment, HookType.AFTER)
    _hook("sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request", check_prompt_tokens,
          HookType.BEFORE)
    _hook("sglang.srt.managers.tokenizer_manager.TokenizerManager._init_req_state", check_request_ids,
          HookType.BEFORE)
    _hook("sglang.srt.entrypoints.http_server._freeze_gc_after_server_warmup", freeze_gc_in_process,
          HookType.REPLACE)
    _hook("sglang.srt.utils.auth._get_auth_level_from_app_and_scope", auth_level_of_request, HookType.REPLACE)
    _hook("sglang.srt.entrypoints.openai.serving_tokenize.OpenAIServingDetokenize._validate_request",
          check_detokenize_tokens, HookType.AFTER)
    _hook("sglang.srt.managers.tokenizer_manager.SignalHandler.sigterm_handler", sigterm_with_drain_deadline,
          HookType.AROUND)
    _hook("sglang.srt.managers.tokenizer_manager.TokenizerManager.generate_request", check_generation_request,
          HookType.BEFORE)
    for serving in ("serving_chat.OpenAIServingChat", "serving_completions.OpenAIServingCompletion"):
        _hook(f"sglang.srt.entrypoints.openai.{serving}._validate_request", check_openai_request,
              HookType.AFTER)
    _hook("sglang.srt.function_call.function_call_parser.FunctionCallParser.__init__", check_tool_call_parser,
          HookType.BEFORE)
    _hook("sglang.srt.parser.reasoning_parser.ReasoningParser.__init__", check_reasoning_parser,
          HookType.BEFORE)
    ollama = "sglang.srt.entrypoints.ollama.serving.OllamaServing"
    _hook(f"{ollama}._convert_options_to_sampling_params", ollama_sampling_params, HookType.AFTER)
    _hook("sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion._convert_to_internal_request",
          zero_new_tokens_for_echo, HookType.AFTER)
    for stream in ("_stream_chat_response", "_stream_generate_response"):
        _hook(f"{ollama}.{stream}", first_chunk_before_the_response, HookType.AROUND)
    logging.getLogger("sglang.srt.entrypoints.openai.serving_completions").addFilter(EchoWithLogprobsWarning())
    from fastapi.exceptions import RequestValidationError
    from sglang.srt.entrypoints.http_server import app

    from megrez_sglang.http_limits import BodySizeLimitMiddleware, use_request_read_deadline
    from megrez_sglang.http_metrics import count_answers_outermost
    from megrez_sglang.overload import GenerationAdmissionMiddleware

    _hook("uvicorn.config.Config.load", use_request_read_deadline, HookType.AFTER)
    # Added before SGLang adds its auth middleware, so they run after authentication; each one
    # added wraps the ones before it: the body's size is checked before anything reads it.
    app.add_middleware(JsonObjectBodyMiddleware)
    app.add_middleware(GenerationAdmissionMiddleware)
    app.add_middleware(BodySizeLimitMiddleware)
    app.add_middleware(WebSocketAuthMiddleware)
    count_answers_outermost(app)
    app.add_exception_handler(ValueError, client_error)
    app.add_exception_handler(json.JSONDecodeError, invalid_json_body)  # orjson's error subclasses it
    app.add_exception_handler(RequestValidationError,
                              validation_error_handler(app.exception_handlers[RequestValidationError]))
    require_admin_key_for_control_endpoints(app)
