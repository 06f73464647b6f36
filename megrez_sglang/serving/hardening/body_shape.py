"""5. A JSON body must be an object, nested at most MAX_JSON_DEPTH deep, and /vertex_generate's
`parameters` must be /generate's fields.

A list, string, number or null reaches pydantic validators that call dict methods on it, and
the server answers 500 instead of 400. Endpoints that parse their body themselves answer an
empty or invalid body with 400 too (upstream: 500). /vertex_generate's `parameters` become
/generate's keyword arguments: an unknown one (e.g. max_new_tokens outside sampling_params) was a
TypeError, answered with 500.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from .echo import prompt_logprobs_only
from .error_messages import bad_request_content
from .http_limits import read_body, replay_body


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
        body = await read_body(receive)
        if body is None:
            return  # the client hung up: nobody to answer
        error = self.body_error(body)
        if error is None and scope["path"] == vertex_route():
            error = vertex_request_error(body)
        if error is not None:
            await self._reject(send, error)
            return
        if scope["path"] == "/v1/completions":
            body = prompt_logprobs_only(body, scope)
        await self.app(scope, replay_body(body, receive), send)

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


async def invalid_json_body(request, exc: json.JSONDecodeError):
    """Exception handler: an endpoint that calls `await request.json()` itself (e.g.
    /add_external_corpus) on an empty or invalid body."""
    from fastapi.responses import JSONResponse

    return JSONResponse(bad_request_content(f"the request body is not valid JSON: {exc}"), status_code=400)
