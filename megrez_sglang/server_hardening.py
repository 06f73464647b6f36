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
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
import pkgutil
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

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
                                drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> dict[str, str]:
    """The environment to start `sglang serve` with: `base` (default os.environ), with the keys it
    holds checked, the switch that makes this package's plugin harden the server, and how long
    requests in flight may run after SIGTERM."""
    env = dict(os.environ if base is None else base)
    keys = environment_keys(env)
    for name, value in zip((API_KEY_ENV, ADMIN_API_KEY_ENV), keys, strict=True):
        if value is None:
            env.pop(name, None)
    env[HARDENING_ENV] = "1"
    env[DRAIN_TIMEOUT_ENV] = str(drain_timeout_s)
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
    from sglang.srt.entrypoints.http_server import app

    # Added before SGLang adds its auth middleware, so it runs after authentication.
    app.add_middleware(JsonObjectBodyMiddleware)
    app.add_middleware(WebSocketAuthMiddleware)
    app.add_exception_handler(json.JSONDecodeError, invalid_json_body)  # orjson's error subclasses it
    require_admin_key_for_control_endpoints(app)
