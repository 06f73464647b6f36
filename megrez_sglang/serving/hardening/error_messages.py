"""9. Client errors SGLang answered with 500, and its error messages.

A ValueError escaping a route (SGLang's own signal for a bad request, which its /generate and
OpenAI routes answer with 400) is a 400 everywhere, in the shape of SGLang's own 400s; validation
errors read "field: problem" instead of Python reprs with the server's file path.
"""

from __future__ import annotations

import re
from typing import Any


def bad_request_content(message: str) -> dict[str, Any]:
    """The shape of SGLang's own 400s (its OpenAI protocol ErrorResponse)."""
    return {"object": "error", "message": message, "type": "BadRequest", "param": None, "code": 400}


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
