"""SGLang's route table, as the hardening tests enumerate it: a route added by a new SGLang is
covered, and must be placed in docs/serving.md's table of who may call what."""

from __future__ import annotations

import re
from dataclasses import dataclass

from megrez_sglang.serving.hardening.control_endpoints import iter_routes

ANYONE_PREFIXES = ("/health", "/ready", "/metrics")  # SGLang's auth lets probes through without a key


@dataclass(frozen=True)
class Route:
    path: str
    methods: frozenset[str]
    control: bool  # SGLang marks it ADMIN_OPTIONAL/ADMIN_FORCE
    requires_body: bool  # FastAPI declares a required JSON body

    @property
    def url_path(self) -> str:
        return re.sub(r"\{[^}]+\}", "x", self.path)


def sglang_routes() -> list[Route]:
    from sglang.srt.entrypoints.http_server import app
    from sglang.srt.utils.auth import AuthLevel

    routes = []
    for route in iter_routes(app.routes):
        body = getattr(route, "body_field", None)
        level = getattr(getattr(route, "endpoint", None), "_auth_level", AuthLevel.NORMAL)
        routes.append(Route(route.path, frozenset(getattr(route, "methods", None) or {"WEBSOCKET"}),
                            level is not AuthLevel.NORMAL, bool(body and body.field_info.is_required())))
    return routes
