"""6. Websocket handshakes are authenticated like HTTP requests."""

from __future__ import annotations

import asyncio

import pytest

from megrez_sglang.server_hardening.websockets import WebSocketAuthMiddleware

from ..conftest import ADMIN_KEY, API_KEY


@pytest.mark.parametrize("authorization, refused", [(None, True), ("Bearer sk-wrong", True),
                                                     (f"Bearer {API_KEY}", False)])
def test_a_websocket_handshake_needs_the_api_key(authorization, refused):
    sent, reached_app = [], []

    async def app(scope, receive, send):
        reached_app.append(scope["path"])

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", authorization.encode())] if authorization else []
    guard = WebSocketAuthMiddleware(app, keys=lambda: (API_KEY, ADMIN_KEY))
    asyncio.run(guard({"type": "websocket", "path": "/v1/realtime", "headers": headers}, receive, send))
    assert (sent, reached_app) == (([{"type": "websocket.close", "code": 1008}], []) if refused
                                   else ([], ["/v1/realtime"]))
