"""6. Websocket connections (/v1/realtime) are authenticated like HTTP requests: SGLang's auth
middleware only looks at HTTP requests. The project's environment holds websocket libraries
(websockets, wsproto), so uvicorn upgrades connections: without the key a handshake gets 403.
"""

from __future__ import annotations


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
