"""6. Websocket handshakes are authenticated like HTTP requests."""

from __future__ import annotations

import asyncio

import pytest

from megrez_sglang.serving.hardening.websockets import WebSocketAuthMiddleware

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


@pytest.mark.parametrize("authorization", [None, "Bearer sk-wrong"])
def test_a_real_websocket_handshake_without_the_api_key_is_refused_with_403(server, authorization):
    """The environment holds websocket libraries (websockets, wsproto: the demo page's and the
    load tool's dependencies), so uvicorn upgrades connections: a handshake to /v1/realtime
    without the key must get the 403 an HTTP request would."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://", 1) + "/v1/realtime"
    headers = {"Authorization": authorization} if authorization else {}
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers=headers, open_timeout=30).close()
    assert refused.value.response.status_code == 403


def test_a_real_websocket_handshake_with_the_api_key_is_upgraded(server):
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://", 1) + "/v1/realtime"
    with connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}, open_timeout=30) as ws:
        assert ws.response.status_code == 101
