"""5. Bodies that are not JSON objects, nested absurdly, or with fields SGLang takes on trust get
400 naming what is wrong."""

from __future__ import annotations

import pytest
import requests

from ..conftest import ADMIN_KEY, API_KEY
from .replies import (
    SERVER_CODE_LOCATION,
    bearer,
    error_message,
    generates,
    healthy,
)
from .routes import sglang_routes

# Fields SGLang takes on trust (each of these was a TypeError inside it: 500).
FIELD_CASES = {
    "/generate a list of ids with one prompt": (
        "/generate", {"text": "你好", "rid": ["a", "b"], "sampling_params": {"max_new_tokens": 2}},
        "rid must be a string, got ['a', 'b'] (a list of ids is for a batch of prompts"),
    "chat a list of ids": (
        "/v1/chat/completions", {"model": "megrez-moe", "messages": [{"role": "user", "content": "你好"}],
                                 "max_tokens": 2, "rid": ["x", "y"]}, "rid must be a string, got ['x', 'y']"),
    "/vertex_generate max_new_tokens outside sampling_params": (
        "/vertex_generate", {"instances": [{"text": "你好"}], "parameters": {"max_new_tokens": 2}},
        "parameters has fields /generate does not take: max_new_tokens (sampling settings go in "
        "parameters.sampling_params"),
    "/vertex_generate a prompt in parameters": (
        "/vertex_generate", {"instances": [{"text": "你好"}], "parameters": {"text": "x"}},
        "parameters must not hold text: the prompts and images go in instances"),
    "/vertex_generate parameters not an object": (
        "/vertex_generate", {"instances": [{"text": "你好"}], "parameters": [1]},
        "parameters must be an object of /generate's fields, got [1]"),
}


@pytest.mark.parametrize("case", FIELD_CASES)
def test_fields_sglang_takes_on_trust_get_400_naming_them(server, case):
    path, body, message = FIELD_CASES[case]
    r = requests.post(f"{server.url}{path}", headers=bearer(API_KEY), json=body, timeout=60)
    assert r.status_code == 400 and message in error_message(r), r.text[:300]
    assert healthy(server.url)


def test_the_same_fields_written_right_are_served(server):
    r = requests.post(f"{server.url}/generate", headers=bearer(API_KEY), timeout=60,
                      json={"text": "你好", "rid": "megrez-rid-1", "sampling_params": {"max_new_tokens": 2}})
    assert r.status_code == 200 and r.json()["meta_info"]["id"] == "megrez-rid-1", r.text[:300]
    r = requests.post(f"{server.url}/vertex_generate", headers=bearer(API_KEY), timeout=60, json={
        "instances": [{"text": "你好"}, {"text": "世界"}],
        "parameters": {"sampling_params": {"max_new_tokens": 2}}})
    assert r.status_code == 200, r.text[:300]
    assert [p["meta_info"]["completion_tokens"] for p in r.json()["predictions"]] == [2, 2]


MALFORMED_BODIES = {"a list": "[1, 2]", "a string": '"hello"', "a number": "42", "null": "null",
                    "an empty body": "", "an object nested 5000 deep": '{"a":' * 5000 + "1" + "}" * 5000}


def test_malformed_bodies_to_every_post_endpoint_get_a_4xx_with_a_message(server):
    """User endpoints with the API key, control endpoints with the admin key (so that the body is
    what gets judged). An empty body is a valid call of a control endpoint that takes no body
    (/flush_cache, /start_profile...): that one is not sent."""
    failures, sent = [], 0
    for route in sglang_routes():
        for method in sorted(route.methods & {"POST", "PUT"}):
            key = ADMIN_KEY if route.control else API_KEY
            for name, raw in MALFORMED_BODIES.items():
                if route.control and not raw and not route.requires_body:
                    continue
                r = requests.request(method, f"{server.url}{route.url_path}", data=raw, timeout=60,
                                     headers={**bearer(key), "Content-Type": "application/json"})
                sent += 1
                message = error_message(r)
                if not (400 <= r.status_code < 500 and message) or SERVER_CODE_LOCATION.search(message):
                    failures.append((method, route.path, name, r.status_code, r.text[:120]))
    assert sent > 200 and failures == []
    assert healthy(server.url) and generates(server.url)


@pytest.mark.parametrize("raw", ["", "{not json"])
def test_an_endpoint_parsing_its_own_body_answers_invalid_json_with_400(server, raw):
    r = requests.post(f"{server.url}/add_external_corpus", data=raw, timeout=30,
                      headers={**bearer(ADMIN_KEY), "Content-Type": "application/json"})
    assert r.status_code == 400 and "the request body is not valid JSON" in error_message(r)
