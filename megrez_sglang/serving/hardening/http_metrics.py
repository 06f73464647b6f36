"""/metrics counts what the server answered; clients that hung up are counted on their own.

Upstream, SGLang's HTTP metrics middleware (sglang.srt.observability.http_request_metrics)
counts the status the application *tried* to send: when a client disconnects before its
answer, SGLang's generation routes see the disconnect, abort the request and return a 400
("Request is disconnected from the client side"), which uvicorn drops (the connection is
gone) and the middleware counts as `sglang:http_responses_total{status_code="400"}`: 2,068
of those against 22 in the access log after 2,000 connect-and-close clients. Here the same
counters, but a request whose client disconnected before its response completed (marked by
http_limits' protocol) goes to `megrez:http_client_disconnects_total{endpoint, method}`
instead. The middleware is also moved outside this project's own middlewares, so their 413 /
429 / 400 answers are counted too.
"""

from __future__ import annotations

from .http_limits import CLIENT_DISCONNECTED

_disconnects = None


def _disconnect_counter():
    global _disconnects
    if _disconnects is None:
        from prometheus_client import Counter

        _disconnects = Counter(name="megrez:http_client_disconnects_total",
                               documentation="HTTP requests whose client disconnected before the response "
                               "completed (not counted in sglang:http_responses_total)",
                               labelnames=["endpoint", "method"])
    return _disconnects


async def count_what_was_answered(request, call_next):
    """SGLang's track_http_status_code, counting a request whose client hung up as a disconnect."""
    from sglang.srt.observability import http_request_metrics as upstream

    metrics = upstream._http_request_metrics
    if metrics is None:
        return await call_next(request)
    path, _ = upstream._get_fastapi_request_path(request)
    method = request.method
    routing_key = request.headers.get("x-smg-routing-key")
    metrics.requests_total.labels(endpoint=path, method=method).inc()
    metrics.requests_active.labels(endpoint=path, method=method).inc()
    if routing_key:
        metrics.routing_keys_active.inc(routing_key)
    try:
        response = await call_next(request)
        if request.scope.get(CLIENT_DISCONNECTED):
            _disconnect_counter().labels(endpoint=path, method=method).inc()
        else:
            metrics.responses_total.labels(endpoint=path, method=method,
                                           status_code=str(response.status_code)).inc()
        return response
    finally:
        metrics.requests_active.labels(endpoint=path, method=method).dec()
        if routing_key:
            metrics.routing_keys_active.dec(routing_key)


def count_answers_outermost(app) -> bool:
    """Replace SGLang's metrics middleware (added when its http_server module is imported) by
    count_what_was_answered, outside every middleware added so far. Returns whether it was found."""
    for i, middleware in enumerate(app.user_middleware):
        dispatch = middleware.kwargs.get("dispatch")
        if getattr(dispatch, "__name__", None) == "track_http_status_code":
            del app.user_middleware[i]
            app.add_middleware(middleware.cls, dispatch=count_what_was_answered)
            return True
    return False
