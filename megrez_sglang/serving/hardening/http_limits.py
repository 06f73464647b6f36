"""What one HTTP connection may hold of the server: the size of a request body, the time to send
a request, and the number of open connections.

Upstream (SGLang 0.5.23 on uvicorn 0.54 with h11; httptools is not installed) reads any body
into memory: a 100 MB chat was read, tokenized (107 s) and answered 400, and the server kept
the 7.7 GB it grew by. uvicorn has no timeout for a request's headers or body (its only
timeout, --timeout-keep-alive, runs between requests and is cancelled by the first byte of the
next one; a connection that never sends a byte has none at all), and no cap on open
connections (--limit-concurrency answers 503 to new *requests* once that many connections are
open, so a few hundred connections that never finish their headers turn every real request
away). So:

* BodySizeLimitMiddleware (ASGI): a body over `max_body_bytes` gets 413 before it is read: at
  once from its Content-Length, or, for a chunked upload, as soon as the bytes received pass
  the limit. The rest of the body is read and dropped as it arrives (never stored: h11 drops
  the data of a request already answered), like nginx's lingering close: a client that sends
  its whole body before reading (python-requests) gets the 413 instead of a connection reset;
  the read deadline below bounds how long. uvicorn buffers at most 64 KiB of a body the
  application has not read (it stops reading the socket above that), so memory stays bounded
  whatever the client sends.
* RequestReadDeadlineProtocol (uvicorn's h11 protocol with a deadline, the layer where a
  request that never finishes its headers exists at all; ASGI sees a request only once its
  headers are complete): a connection must deliver a whole request, headers and body, within
  `read_timeout_s` of opening (or of its first byte after the previous response); otherwise it
  gets 408 and is closed, like nginx's client_header_timeout / client_body_timeout. A
  connection opened while `max_connections` are open gets 503 and is closed at once.
  It also marks a request whose client hung up before the response completed (http_metrics).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from .admission import server_sizes

logger = logging.getLogger(__name__)

MAX_BODY_BYTES_ENV = "MEGREZ_MAX_BODY_BYTES"
READ_TIMEOUT_ENV = "MEGREZ_REQUEST_READ_TIMEOUT_S"
MAX_CONNECTIONS_ENV = "MEGREZ_MAX_CONNECTIONS"
# Default body limit: BODY_BYTES_PER_CONTEXT_TOKEN bytes per token of the context plus
# BODY_BYTES_FOR_SCHEMAS. A prompt's text takes ~1-4 bytes a token (UTF-8; ~6 for CJK escaped
# as \\uXXXX), token ids ~7 ("123456, "): 16 leaves room for JSON's quoting and message
# framing; the fixed part is for JSON schemas, tool lists and grammars. Context 32,768: 1.5 MiB
# (text-generation-inference's --payload-limit default is 2 MB).
BODY_BYTES_PER_CONTEXT_TOKEN = 16
BODY_BYTES_FOR_SCHEMAS = 1 << 20
DEFAULT_READ_TIMEOUT_S = 30.0  # nginx: 60 s each for headers and body
DEFAULT_MAX_CONNECTIONS = 1000  # well below the usual 1024-descriptor soft limit of a process


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """max_body_bytes 0: derived from the context (default_max_body_bytes)."""

    max_body_bytes: int = 0
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_environment(cls) -> ConnectionLimits:
        return cls(int(os.environ.get(MAX_BODY_BYTES_ENV, 0)),
                   float(os.environ.get(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT_S)),
                   int(os.environ.get(MAX_CONNECTIONS_ENV, DEFAULT_MAX_CONNECTIONS)))

    def as_environment(self) -> dict[str, str]:
        return {MAX_BODY_BYTES_ENV: str(self.max_body_bytes), READ_TIMEOUT_ENV: str(self.read_timeout_s),
                MAX_CONNECTIONS_ENV: str(self.max_connections)}


def default_max_body_bytes(context_len: int) -> int:
    return context_len * BODY_BYTES_PER_CONTEXT_TOKEN + BODY_BYTES_FOR_SCHEMAS


async def send_json_error(send, status: int, message: str, *, headers=()) -> None:
    """An error in the shape of SGLang's own (its OpenAI protocol ErrorResponse), from ASGI."""
    kind = {413: "RequestTooLarge", 429: "TooManyRequests", 400: "BadRequest"}.get(status, "Error")
    payload = json.dumps({"object": "error", "message": message, "type": kind, "param": None,
                          "code": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


async def read_body(receive) -> bytes | None:
    """The whole body of an ASGI HTTP request (None: the client hung up first). For middlewares
    that must see a body before the app does; hand the app replay_body(body, receive)."""
    chunks, message = [], {"more_body": True}
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def replay_body(body: bytes, receive):
    """An ASGI receive() that gives the app `body` once, then what the client sends (a disconnect)."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodySizeLimitMiddleware:
    """ASGI middleware: 413 for a body over the limit, before it is read (see the module)."""

    def __init__(self, app, max_body_bytes: int | None = None):
        self.app = app
        self._max_body_bytes = max_body_bytes

    @property
    def max_body_bytes(self) -> int:
        if self._max_body_bytes is None:  # the context is known once the server runs
            self._max_body_bytes = ConnectionLimits.from_environment().max_body_bytes or \
                default_max_body_bytes(server_sizes()[0])
        return self._max_body_bytes

    def too_large(self, size: str) -> str:
        return (f"the request body is {size}, above this server's limit of {self.max_body_bytes} bytes "
                "(launch_server.sh --max-body-bytes; by default 16 bytes per token of the context + 1 MiB)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await send_json_error(send, 413, self.too_large(f"{int(value)} bytes"))
                return
        received = 0
        response_started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await send_json_error(send, 413, self.too_large(f"over {limit} bytes (chunked)"))


class _BodyTooLarge(Exception):
    """Raised out of receive() into the application; caught by BodySizeLimitMiddleware."""


# ---------------------------------------------------------------------------------------------
# connections

CLIENT_DISCONNECTED = "megrez.client_disconnected"  # key in a request's ASGI scope
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
              b"content-length: %d\r\n\r\n%s")
_TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
             b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s")


def _raw_response(template: bytes, message: str) -> bytes:
    body = message.encode() + b"\n"
    return template % (len(body), body)


def request_read_deadline_protocol(base: type) -> type:
    """uvicorn's H11Protocol (`base`) with the read deadline and the connection cap (see the
    module); the limits come from the environment (ConnectionLimits)."""
    import h11

    limits = ConnectionLimits.from_environment()

    class RequestReadDeadlineProtocol(base):
        _read_deadline = None

        def connection_made(self, transport) -> None:
            over_cap = len(self.connections) >= limits.max_connections
            super().connection_made(transport)
            if over_cap:
                logger.warning("refused a connection: %d connections are open (--max-connections)",
                               len(self.connections) - 1)
                transport.write(_raw_response(_TOO_MANY, (
                    f"this server has {limits.max_connections} connections open, its limit "
                    "(launch_server.sh --max-connections); retry shortly")))
                transport.close()
                return
            self._arm_read_deadline()

        def data_received(self, data: bytes) -> None:
            if self._read_deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm_read_deadline()  # the first byte of the next request on this connection
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            cycle = self.cycle
            if self._read_deadline is not None and cycle is not None and not cycle.more_body and \
                    not cycle.response_complete:
                self._disarm_read_deadline()  # the whole request is in

        def connection_lost(self, exc) -> None:
            self._disarm_read_deadline()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.scope[CLIENT_DISCONNECTED] = True
            super().connection_lost(exc)

        def _arm_read_deadline(self) -> None:
            self._disarm_read_deadline()
            self._read_deadline = self.loop.call_later(limits.read_timeout_s, self._read_timed_out)

        def _disarm_read_deadline(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _read_timed_out(self) -> None:
            self._read_deadline = None
            if self.transport.is_closing():
                return
            if self.conn.our_state is h11.IDLE:  # no answer to this request yet (a 413 may be sent)
                self.transport.write(_raw_response(_TIMED_OUT, (
                    f"the request (headers and body) did not arrive within {limits.read_timeout_s:g} s "
                    "(launch_server.sh --request-read-timeout)")))
            self.transport.close()

    return RequestReadDeadlineProtocol


def use_request_read_deadline(_result, config, *_args, **_kwargs) -> None:
    """AFTER-hook of uvicorn.config.Config.load (SGLang builds its uvicorn Config itself, without
    a choice of protocol): the h11 protocol it loaded, with the deadline and connection cap."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    protocol = config.http_protocol_class
    if isinstance(protocol, type) and issubclass(protocol, H11Protocol):
        config.http_protocol_class = request_read_deadline_protocol(protocol)
    else:
        logger.warning("uvicorn serves with %s, not h11: no request read deadline or connection cap",
                       protocol)
