"""3. Control endpoints need the admin key; 7. the post-warm-up GC freeze runs in-process.

Every endpoint SGLang marks ADMIN_OPTIONAL is marked ADMIN_FORCE, so SGLang's own auth middleware
answers 403 to everyone while no admin key is configured, and accepts only the admin key
otherwise (upstream, a server with only --api-key lets the user key swap weights or pause
generation). The middleware's route lookup also looks inside included routers: with FastAPI
0.165 it found no mark on /scale_elastic_ep and /is_scaling_elastic_ep, which upstream were open
to any caller. SGLang freezes the GC after warm-up through POST /freeze_gc, now admin-only: the
same call runs in-process instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)


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
