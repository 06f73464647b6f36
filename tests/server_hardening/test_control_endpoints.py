"""3. Control endpoints need the admin key; every route is in docs/serving.md's table of who may call
what."""

from __future__ import annotations

import re

import pytest
import requests

from ..conftest import ADMIN_KEY, API_KEY, ROOT
from .replies import (
    bearer,
)
from .routes import ANYONE_PREFIXES, sglang_routes


@pytest.mark.slow  # imports SGLang's HTTP server (10-20 s); cheap after the engine tests
def test_the_route_table_covers_every_documented_path():
    from sglang.srt.entrypoints.http_server import app

    openapi_paths = set(app.openapi()["paths"])  # FastAPI's own listing, included routers too
    # OpenAPI writes /v1/models/{model:path} without the converter
    enumerated = {re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path) for r in sglang_routes()}
    assert len(openapi_paths) > 50 and openapi_paths <= enumerated


@pytest.mark.slow  # imports SGLang's HTTP server
def test_the_serving_docs_list_every_endpoint_by_who_may_call_it():
    rows = {}
    for line in (ROOT / "docs" / "serving.md").read_text().splitlines():
        for role, start in (("anyone", "| anyone, no key"), ("user", "| the API key"),
                            ("admin", "| the admin key only")):
            if line.startswith(start):
                rows[role] = set(re.findall(r"`(/[^`]*)`", line))
    routes = sglang_routes()
    anyone = {r.path for r in routes if r.path.startswith(ANYONE_PREFIXES)}
    assert rows["anyone"] == anyone | {"/metrics"}  # /metrics exists with --enable-metrics only
    assert rows["admin"] == {r.path for r in routes if r.control}
    assert rows["user"] == {r.path for r in routes if not r.control} - anyone


def test_control_endpoints_refuse_the_api_key_and_callers_without_a_key(server):
    control = [r for r in sglang_routes() if r.control]
    assert {"/update_weights_from_disk", "/set_internal_state", "/pause_generation", "/flush_cache",
            "/start_profile", "/configure_logging"} <= {r.path for r in control}
    for route in control:
        for method in route.methods - {"HEAD"}:
            for key in (API_KEY, None, "sk-wrong"):
                r = requests.request(method, f"{server.url}{route.url_path}", headers=bearer(key), timeout=30)
                assert r.status_code == 401, (method, route.path, key, r.status_code)


def test_the_admin_key_opens_control_endpoints_and_only_those(server):
    r = requests.post(f"{server.url}/flush_cache", headers=bearer(ADMIN_KEY), timeout=60)
    assert r.status_code == 200 and "Cache flushed" in r.text
    r = requests.get(f"{server.url}/list_external_corpora", headers=bearer(ADMIN_KEY), timeout=30)
    assert r.status_code not in (401, 403)
    assert requests.get(f"{server.url}/v1/models", headers=bearer(ADMIN_KEY), timeout=30).status_code == 401


def test_health_answers_without_a_key_and_the_api_does_not(server):
    assert requests.get(f"{server.url}/health", timeout=30).status_code == 200
    assert requests.get(f"{server.url}/v1/models", timeout=30).status_code == 401
