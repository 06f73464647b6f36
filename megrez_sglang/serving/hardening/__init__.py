"""What this project changes in SGLang 0.5.23's HTTP server, and why: one module per concern, and
one install() that registers every hook, in order.

SGLang's server as released lets one request stop it, prints its API key, and gives every key
holder the control endpoints. The supervisor (server.py, launch_server.sh) and any other launcher
of `sglang serve` (e.g. a multi-replica cluster) ask for the changes below by starting the server
with `hardened_server_environment()`; this package's SGLang plugin (registration.register) then
calls `install()` in every SGLang process. A bare `sglang serve` or an in-process `sglang.Engine`
is left exactly as upstream ships it.

  keys               1-2. keys from the environment, never argv; redacted in logs and /server_info
  control_endpoints  3, 7. control endpoints need the admin key; the GC freeze runs in-process
  token_ids          4. prompts, token ids and request ids checked before the scheduler sees them
  body_shape         5. a JSON body is an object, not nested absurdly; /vertex_generate's parameters
  websockets         6. websocket handshakes authenticated like HTTP requests
  shutdown           8. SIGTERM drains with a deadline
  error_messages     9. ValueError is a 400 everywhere; validation errors read "field: problem"
  parser_names       tool-call and reasoning parser names checked (were 500s)
  ollama             Ollama's routes: num_predict unset caps to the context; refusals before the stream
  echo               /v1/completions echo with max_tokens 0 scores the prompt; no warning per request
  admission          10. what one request may ask for (n, prompts, new tokens), seeds SGLang would drop
  overload           11. what all admitted requests may hold, in tokens (429 with Retry-After); a
                     prompt whose characters prove it cannot fit the context (400, before tokenizing)
  http_limits        12. body size (413), time to send a request (408), open connections (503)
  http_metrics       13. /metrics counts what was answered, and client disconnects apart

install() is the one place that names SGLang's private targets: an SGLang upgrade is checked
there (each target is resolved when it is registered, so a renamed one fails the start-up).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Mapping

from .admission import (
    DEFAULT_MAX_N,
    DEFAULT_MAX_PROMPTS,
    AdmissionLimits,
    check_generation_request,
    check_openai_request,
)
from .body_shape import JsonObjectBodyMiddleware, invalid_json_body
from .control_endpoints import (
    auth_level_of_request,
    freeze_gc_in_process,
    require_admin_key_for_control_endpoints,
)
from .echo import EchoWithLogprobsWarning, zero_new_tokens_for_echo
from .error_messages import client_error, validation_error_handler
from .http_limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT_S,
    BodySizeLimitMiddleware,
    ConnectionLimits,
    use_request_read_deadline,
)
from .http_metrics import count_answers_outermost
from .keys import (
    ADMIN_API_KEY_ENV,
    API_KEY_ENV,
    KeyConfigurationError,
    environment_keys,
    keys_from_environment,
    redact_keys,
)
from .ollama import first_chunk_before_the_response, ollama_sampling_params
from .overload import GenerationAdmissionMiddleware, OverloadLimits
from .parser_names import check_reasoning_parser, check_tool_call_parser
from .shutdown import DEFAULT_DRAIN_TIMEOUT_S, DRAIN_TIMEOUT_ENV, sigterm_with_drain_deadline
from .token_ids import check_detokenize_tokens, check_prompt_tokens, check_request_ids
from .websockets import WebSocketAuthMiddleware

# What launchers (server.py, cluster.py, gateway.py) and clients use; the rest lives in its module.
__all__ = ["ADMIN_API_KEY_ENV", "API_KEY_ENV", "DEFAULT_DRAIN_TIMEOUT_S", "DEFAULT_MAX_CONNECTIONS",
           "DEFAULT_MAX_N", "DEFAULT_MAX_PROMPTS", "DEFAULT_READ_TIMEOUT_S", "HARDENING_ENV",
           "AdmissionLimits", "ConnectionLimits", "KeyConfigurationError", "OverloadLimits",
           "environment_keys", "hardened_server_environment", "install", "requested"]

# Set by launchers in the server's environment (not a secret: children inherit it).
HARDENING_ENV = "MEGREZ_HARDENED_SERVER"


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


def _hook(target: str, hook, hook_type) -> None:
    import pkgutil

    from sglang.srt.plugins.hook_registry import HookRegistry

    pkgutil.resolve_name(target)  # HookRegistry only logs a missing target: fail here instead
    HookRegistry.register(target, hook, hook_type)


def install() -> None:
    """Called by the SGLang plugin in every SGLang process when a launcher asked for it. Every
    hook into SGLang, in the order registered; then the HTTP app's middlewares and handlers."""
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
