"""The server survives its clients and keeps its secrets: hostile and careless requests against the
shared server (launch_server.sh on the tiny checkpoint, API key and admin key set), then faults
(SIGTERM under load, a quick restart, a killed scheduler) on servers of their own.

Endpoints are enumerated from SGLang's own route table, so a route added by a new SGLang is
covered (and must be placed in the README's table of who may call what)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import psutil
import pytest
import requests

import megrez_sglang.server
from megrez_sglang.server import ServerProcess, is_alive, process_title
from megrez_sglang.server_hardening import (
    KeyConfigurationError,
    WebSocketAuthMiddleware,
    hardened_server_environment,
    iter_routes,
    keys_from_environment,
    validation_message,
)

from .conftest import ADMIN_KEY, API_KEY, ROOT

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


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def error_message(r: requests.Response) -> str:
    """The message of an error reply, wherever the endpoint puts it."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in ("message", "error", "detail", "msg"):
                if isinstance(item.get(key), str) and item[key].strip():
                    return item[key]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return ""


def healthy(url: str) -> bool:
    return requests.get(f"{url}/health", timeout=30).status_code == 200


def generates(url: str) -> bool:
    r = requests.post(f"{url}/generate", headers=bearer(API_KEY), timeout=60,
                      json={"text": "你好", "sampling_params": {"max_new_tokens": 2}})
    return r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 2


@pytest.fixture(scope="module")
def vocab_size(tiny_checkpoint) -> int:
    return json.loads((Path(tiny_checkpoint) / "config.json").read_text())["vocab_size"]


# ------------------------------------------------------------------------------------- quick lane


@pytest.mark.slow  # imports SGLang's HTTP server (10-20 s); cheap after the engine tests
def test_the_route_table_covers_every_documented_path():
    from sglang.srt.entrypoints.http_server import app

    openapi_paths = set(app.openapi()["paths"])  # FastAPI's own listing, included routers too
    # OpenAPI writes /v1/models/{model:path} without the converter
    enumerated = {re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path) for r in sglang_routes()}
    assert len(openapi_paths) > 50 and openapi_paths <= enumerated


@pytest.mark.slow  # imports SGLang's HTTP server
def test_the_readme_lists_every_endpoint_by_who_may_call_it():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        for role, start in (("anyone", "| anyone, no key"), ("user", "| the API key"),
                            ("admin", "| the admin key only")):
            if line.startswith(start):
                rows[role] = set(re.findall(r"`(/[^`]*)`", line))
    routes = sglang_routes()
    anyone = {r.path for r in routes if r.path.startswith(ANYONE_PREFIXES)}
    assert rows["anyone"] == anyone | {"/metrics"}  # /metrics exists with --enable-metrics only
    assert rows["admin"] == {r.path for r in routes if r.control}
    assert rows["user"] == {r.path for r in routes if not r.control} - anyone


def test_key_settings_that_would_protect_nothing_are_refused():
    with pytest.raises(KeyConfigurationError, match="MEGREZ_ADMIN_API_KEY equals MEGREZ_API_KEY"):
        hardened_server_environment({"MEGREZ_API_KEY": "sk-1", "MEGREZ_ADMIN_API_KEY": "sk-1"})
    assert hardened_server_environment({"MEGREZ_API_KEY": "sk-1"})["MEGREZ_HARDENED_SERVER"] == "1"
    assert "MEGREZ_API_KEY" not in hardened_server_environment({"MEGREZ_API_KEY": ""})  # empty: no key
    with pytest.raises(KeyConfigurationError, match="MEGREZ_API_KEY is blank"):
        hardened_server_environment({"MEGREZ_API_KEY": "  "})


def test_a_key_passed_as_a_flag_is_refused_before_anything_starts(tiny_checkpoint, monkeypatch, capsys):
    def no_server(*args, **kwargs):
        raise AssertionError("the supervisor started SGLang")

    monkeypatch.setattr(megrez_sglang.server.subprocess, "Popen", no_server)
    assert megrez_sglang.server.main([tiny_checkpoint, "--", "--api-key", "sk-visible"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "launch_server: error: --api-key would put the key on the command line")


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


def test_validation_messages_name_fields_the_way_clients_write_them():
    """pydantic's error locations, as FastAPI reports them for SGLang's request models: the union
    member pydantic tried is left out, list indexes are brackets, "body" is implied."""
    errors = [
        {"loc": ("body", "messages", 0, "function-after[validate_role(), ChatCompletionMessageGenericParam]",
                 "role"), "msg": "Value error, 'role' must be one of 'system', 'assistant'"},
        {"loc": ("body", "messages", 0, "ChatCompletionMessageUserParam", "content"),
         "msg": "Field required"},
        {"loc": ("body", "prompt", "list[int]", 2), "msg": "Input should be a valid integer"},
        {"loc": ("header", "content-type"),
         "msg": "Unsupported Media Type: Only 'application/json' is allowed"},
        {"loc": ("body",), "msg": "Field required"},
        {"loc": ("body", "messages", 0, "ChatCompletionMessageUserParam", "content"),  # once only
         "msg": "Field required"},
    ]
    assert validation_message(errors) == (
        "messages[0].role: Value error, 'role' must be one of 'system', 'assistant'; "
        "messages[0].content: Field required; prompt[2]: Input should be a valid integer; "
        "header.content-type: Unsupported Media Type: Only 'application/json' is allowed; "
        "the request body: Field required")
    many = [{"loc": ("body", f"f{i}"), "msg": "Field required"} for i in range(8)]
    assert validation_message(many).endswith("f4: Field required; and 3 more")


# ------------------------------------------------------------------------------ the shared server


def server_processes(server) -> list[psutil.Process]:
    supervisor = psutil.Process(server.process.pid)
    return [supervisor, *supervisor.children(recursive=True)]


def test_no_process_of_the_server_has_a_key_in_its_arguments(server):
    processes = server_processes(server)
    assert any(process_title(p).startswith("sglang::scheduler") for p in processes)
    for p in processes:
        arguments = " ".join(p.cmdline())
        assert API_KEY not in arguments and ADMIN_KEY not in arguments, arguments


def test_processes_the_server_starts_do_not_inherit_the_keys(server):
    """The keys are taken out of the server's environment before it starts its workers. The
    scheduler and detokenizer overwrite /proc/<pid>/environ with their process titles; the
    multiprocessing resource tracker, spawned alongside them, shows what they inherited."""
    sglang_server = psutil.Process(server.process.pid).children()[0]
    # it was given them (its own /proc/<pid>/environ keeps the start-up copy: owner-readable only)
    assert sglang_server.environ()["MEGREZ_API_KEY"] == API_KEY
    witnesses = [p.environ() for p in sglang_server.children(recursive=True) if p.environ()]
    assert witnesses and all(w.get("MEGREZ_HARDENED_SERVER") == "1" for w in witnesses)
    for environment in witnesses:
        assert not {API_KEY, ADMIN_KEY} & set(environment.values())
        assert not {"MEGREZ_API_KEY", "MEGREZ_ADMIN_API_KEY"} & set(environment)


def test_the_keys_are_read_from_the_environment_and_removed_from_it(monkeypatch):
    monkeypatch.setenv("MEGREZ_API_KEY", "sk-user")
    monkeypatch.setenv("MEGREZ_ADMIN_API_KEY", "sk-admin")
    args = keys_from_environment(SimpleNamespace(api_key=None, admin_api_key=None), ["--port", "1"])
    assert (args.api_key, args.admin_api_key) == ("sk-user", "sk-admin")
    assert "MEGREZ_API_KEY" not in os.environ and "MEGREZ_ADMIN_API_KEY" not in os.environ


def test_server_info_reports_the_keys_redacted(server):
    info = requests.get(f"{server.url}/server_info", headers=bearer(API_KEY), timeout=30).json()
    assert (info["api_key"], info["admin_api_key"]) == ("<redacted>", "<redacted>")
    scheduler_state = info["internal_states"][0]  # computed in the scheduler process
    assert (scheduler_state["api_key"], scheduler_state["admin_api_key"]) == ("<redacted>", "<redacted>")


def test_no_get_endpoint_answers_with_a_key(server):
    answered = {}
    for route in sglang_routes():
        if "GET" not in route.methods:
            continue
        if route.control and not route.methods <= {"GET", "HEAD"}:
            continue  # GET+POST control routes are actions (start_profile...), not information
        key = ADMIN_KEY if route.control else API_KEY
        r = requests.get(f"{server.url}{route.url_path}", headers=bearer(key), timeout=60)
        answered[route.path] = r.status_code
        assert API_KEY not in r.text and ADMIN_KEY not in r.text, route.path
    for path in ("/server_info", "/get_server_info", "/model_info", "/v1/models", "/v1/loads"):
        assert answered[path] == 200, path  # the endpoints that describe the server did answer


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


def token_id_cases(v: int) -> list[tuple[str, str, dict, list[str]]]:
    """(name, path, body, what the 400 must say) for vocabulary size v."""
    chat = {"model": "megrez-moe", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2}
    gen = {"text": "你好", "sampling_params": {"max_new_tokens": 2}}
    ids_range = f"valid token ids are 0..{v - 1}"
    return [
        ("/generate input_ids", "/generate",
         {"input_ids": [1000000000, -5], "sampling_params": {"max_new_tokens": 2}},
         ["input_ids[0] = 1000000000", ids_range]),
        ("/generate batched input_ids", "/generate",
         {"input_ids": [[1, 2], [3, -5]], "sampling_params": {"max_new_tokens": 2}},
         ["input_ids[1] = -5", ids_range]),
        ("/v1/completions token prompt", "/v1/completions",
         {"model": "megrez-moe", "prompt": [5, v], "max_tokens": 2}, [f"input_ids[1] = {v}", ids_range]),
        ("/v1/completions batched token prompts", "/v1/completions",
         {"model": "megrez-moe", "prompt": [[5, 6], [7, -1]], "max_tokens": 2},
         ["input_ids[1] = -1", ids_range]),
        ("token_ids_logprob", "/generate", {**gen, "return_logprob": True, "token_ids_logprob": [3, v]},
         [f"token id {v}", f"[0, {v})"]),
        ("chat logit_bias", "/v1/chat/completions", {**chat, "logit_bias": {str(v): 5}},
         [f"got {v}", f"[0, {v - 1}]"]),
        ("completions logit_bias", "/v1/completions",
         {"model": "megrez-moe", "prompt": "你好", "max_tokens": 2, "logit_bias": {"-3": 5}},
         ["got -3", f"[0, {v - 1}]"]),
        ("/generate stop_token_ids", "/generate",
         {"text": "你好", "sampling_params": {"max_new_tokens": 4, "min_new_tokens": 2,
                                              "stop_token_ids": [v]}},
         [f"stop_token_ids contains {v}", ids_range]),
        ("chat stop_token_ids", "/v1/chat/completions", {**chat, "stop_token_ids": [-1], "min_tokens": 1},
         ["stop_token_ids contains -1", ids_range]),
        ("/generate top_logprobs_num", "/generate",
         {**gen, "return_logprob": True, "top_logprobs_num": 10 * v},
         [f"top_logprobs_num = {10 * v}", f"0..{v}"]),
        ("chat top_logprobs", "/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": v + 1},
         [f"top_logprobs_num = {v + 1}", f"0..{v}"]),
        ("/detokenize", "/detokenize", {"model": "megrez-moe", "tokens": [5, -1]},
         ["tokens[1] = -1", ids_range]),
        ("/generate empty text prompt", "/generate", {"text": "", "sampling_params": {"max_new_tokens": 2}},
         ["the prompt is empty"]),
        ("/generate batch with an empty text prompt", "/generate",
         {"text": ["你好", ""], "sampling_params": {"max_new_tokens": 2}}, ["the prompt is empty"]),
    ]


@pytest.mark.parametrize("case", range(len(token_id_cases(100))),
                         ids=[c[0] for c in token_id_cases(100)])
def test_token_ids_outside_the_vocabulary_get_400_naming_them_and_the_server_keeps_serving(
        server, vocab_size, case):
    _, path, body, fragments = token_id_cases(vocab_size)[case]
    r = requests.post(f"{server.url}{path}", headers=bearer(API_KEY), json=body, timeout=60)
    assert r.status_code == 400, r.text[:300]
    for fragment in fragments:
        assert fragment in error_message(r), (fragment, r.text[:300])
    assert healthy(server.url) and generates(server.url)


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


def test_the_first_and_last_token_ids_are_accepted(server, vocab_size):
    r = requests.post(f"{server.url}/generate", headers=bearer(API_KEY), timeout=60, json={
        "input_ids": [0, vocab_size - 1], "return_logprob": True, "token_ids_logprob": [0, vocab_size - 1],
        "sampling_params": {"max_new_tokens": 2, "min_new_tokens": 1, "stop_token_ids": [vocab_size - 1]}})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["meta_info"]["prompt_tokens"] == 2


def test_a_frontend_language_program_sending_a_bad_token_id_is_refused(server, vocab_size):
    """The frontend language sends token ids only as stop_token_ids (its prompts are text; its
    choice scoring re-sends ids the server itself returned): those go through /generate."""
    import sglang as sgl

    from megrez_sglang.programs import endpoint

    @sgl.function
    def short_answer(s):
        s += "问题：世界上最高的山峰是哪座？答案：" + sgl.gen("answer", max_tokens=4, min_tokens=1,
                                                       stop_token_ids=[vocab_size])

    state = short_answer.run(backend=endpoint(server.url, api_key=API_KEY))
    assert isinstance(state.error(), RuntimeError)
    assert f"stop_token_ids contains {vocab_size}" in str(state.error())
    assert healthy(server.url) and generates(server.url)


MALFORMED_BODIES = {"a list": "[1, 2]", "a string": '"hello"', "a number": "42", "null": "null",
                    "an empty body": "", "an object nested 5000 deep": '{"a":' * 5000 + "1" + "}" * 5000}
# what an error message must never show: where in the server's code it was raised
SERVER_CODE_LOCATION = re.compile(r'File "|\.py\b|, line \d+')


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


def scheduler_load(url: str) -> dict:
    loads = requests.get(f"{url}/v1/loads", headers=bearer(API_KEY), timeout=30).json()["loads"]
    return loads[0]


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["A", "B", "C", "D"]}},
                 "required": ["answer"], "additionalProperties": False}
VERDICT_REGEX = r"(是|否)，[0-9]{1,3}"


def test_64_mixed_clients_8_dropping_their_streams_leave_nothing_behind(server, client):
    def plain(i):
        r = client.chat.completions.create(model="megrez-moe", max_tokens=16, temperature=0.7,
                                           messages=[{"role": "user", "content": f"问题 {i}：你好"}])
        assert r.choices[0].finish_reason in ("length", "stop")
        assert isinstance(r.choices[0].message.content, str) and r.usage.completion_tokens <= 16

    def streaming(i):
        chunks = list(client.chat.completions.create(
            model="megrez-moe", max_tokens=24, stream=True,
            messages=[{"role": "user", "content": f"第{i}个问题"}]))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finish) == 1 and finish[0] in ("length", "stop")

    def dropping(i):
        """Reads half of a 64-token stream, then hangs up."""
        with requests.post(f"{server.url}/generate", headers=bearer(API_KEY), stream=True, timeout=120, json={
                "text": f"第{i}个故事：", "stream": True,
                "sampling_params": {"max_new_tokens": 64, "ignore_eos": True}}) as r:
            assert r.status_code == 200
            events = 0
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    events += 1
                    if events == 32:
                        break
            assert events == 32

    def regex(i):
        r = requests.post(f"{server.url}/generate", headers=bearer(API_KEY), timeout=120, json={
            "text": f"问题 {i}：对吗？回答：", "sampling_params": {"max_new_tokens": 12, "temperature": 0.8,
                                                        "regex": VERDICT_REGEX}})
        assert r.status_code == 200, r.text[:200]
        assert re.fullmatch(VERDICT_REGEX, r.json()["text"]), r.json()["text"]

    def schema(i):
        r = client.chat.completions.create(
            model="megrez-moe", max_tokens=32, temperature=0.7,
            messages=[{"role": "user", "content": "Which is right? A, B, C or D?"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "choice", "schema": ANSWER_SCHEMA, "strict": True}})
        jsonschema.validate(json.loads(r.choices[0].message.content), ANSWER_SCHEMA)

    clients = [plain] * 16 + [streaming] * 16 + [dropping] * 8 + [regex] * 12 + [schema] * 12
    assert len(clients) == 64
    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(kind, i) for i, kind in enumerate(clients)]
        errors = [(clients[i].__name__, repr(f.exception())) for i, f in enumerate(futures) if f.exception()]
    assert errors == []
    assert healthy(server.url)
    deadline, load = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        load = scheduler_load(server.url)
        if load["num_running_reqs"] == 0 and load["num_waiting_reqs"] == 0 and load["num_used_tokens"] == 0:
            break
        time.sleep(1)
    assert (load["num_running_reqs"], load["num_waiting_reqs"], load["num_used_tokens"]) == (0, 0, 0), load


# ------------------------------------------- what third-party clients hit first (admission, 500s, seeds)

CHAT = {"model": "megrez-moe", "messages": [{"role": "user", "content": "你好"}]}
COMPLETION = {"model": "megrez-moe", "prompt": "你好"}


def post(server, path: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}{path}", headers=bearer(API_KEY), json=body, timeout=120, **kwargs)


def nothing_queued_or_running(url: str) -> bool:
    load = scheduler_load(url)
    return (load["num_running_reqs"], load["num_waiting_reqs"]) == (0, 0)


# The shared server runs with the default limits: n <= 8, <= 64 prompts, and at most its KV pool
# (16,384 tokens on CPU) of new tokens per request; its context is 4096 tokens, its hidden size 64.
OVER_THE_LIMITS = {
    "chat n=25000 (the request that held the server for 5 minutes)": (
        "/v1/chat/completions", {**CHAT, "n": 25000, "max_tokens": 2},
        "n = 25000 is above this server's limit of 8 samples per prompt (launch_server.sh --max-n)"),
    "a streamed chat, refused before its stream starts": (
        "/v1/chat/completions", {**CHAT, "n": 9, "max_tokens": 2, "stream": True},
        "n = 9 is above this server's limit of 8 samples per prompt"),
    "completions n x max_tokens above the KV pool": (
        "/v1/completions", {**COMPLETION, "n": 8, "max_tokens": 2049},
        "asks for up to 16392 new tokens (1 prompt(s) x n = 8 x max_tokens), above this server's limit "
        "of 16384 per request (launch_server.sh --max-request-tokens; by default its KV pool)"),
    "completions with 65 prompts": (
        "/v1/completions", {**COMPLETION, "prompt": ["你好"] * 65, "max_tokens": 1},
        "the request holds 65 prompts, above this server's limit of 64 per request (launch_server.sh "
        "--max-prompts)"),
    "/generate with 65 prompts": (
        "/generate", {"text": ["你好"] * 65, "sampling_params": {"max_new_tokens": 1}},
        "the request holds 65 prompts, above this server's limit of 64"),
    "/generate n=9": (
        "/generate", {"text": "你好", "sampling_params": {"max_new_tokens": 1, "n": 9}},
        "n = 9 is above this server's limit of 8"),
    "/generate batch x n x max_new_tokens": (
        "/generate", {"input_ids": [[5, 6], [7, 8]], "sampling_params": {"max_new_tokens": 1200, "n": 8}},
        "asks for up to 19200 new tokens (2 prompt(s) x n = 8 x max_tokens)"),
    "best_of, which SGLang ignores": (
        "/v1/completions", {**COMPLETION, "best_of": 3, "max_tokens": 2},
        "best_of = 3 is not supported: SGLang ignores best_of"),
}


@pytest.mark.parametrize("case", OVER_THE_LIMITS)
def test_a_request_above_the_admission_limits_gets_400_naming_the_limit_and_never_runs(server, case):
    path, body, message = OVER_THE_LIMITS[case]
    r = post(server, path, body)
    assert r.status_code == 400 and message in error_message(r), r.text[:400]
    assert nothing_queued_or_running(server.url)  # refused before the scheduler saw it


def test_the_largest_requests_the_limits_allow_are_served(server):
    r = post(server, "/v1/chat/completions", {**CHAT, "n": 8, "max_tokens": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 8, r.text[:300]
    r = post(server, "/generate", {"text": ["你好"] * 64, "sampling_params": {"max_new_tokens": 1}})
    assert r.status_code == 200 and [o["meta_info"]["completion_tokens"] for o in r.json()] == [1] * 64


# Each was a 500 (the server stayed up), or a 200 stream that broke off.
CLIENT_ERRORS = {
    "/api/chat without messages": (
        "/api/chat", {"messages": [], "model": ""}, "Cannot apply chat template to an empty conversation"),
    "/api/generate streaming past the context": (
        "/api/generate", {"prompt": "你好", "model": "", "stream": True, "options": {"num_predict": 5000}},
        "exceeds the model's maximum context length of 4096 tokens"),
    "/api/chat with a seed it would drop": (
        "/api/chat", {"messages": [{"role": "user", "content": "你好"}], "model": "", "stream": False,
                      "options": {"seed": 42, "num_predict": 4}}, "seed is not honoured by this server"),
    "/parse_function_call without a parser": (
        "/parse_function_call", {"text": "hi", "tool_call_parser": "", "tools": []},
        "tool_call_parser '' is not a parser this server knows; one of: "),
    "/parse_function_call with an unknown parser": (
        "/parse_function_call", {"text": "hi", "tool_call_parser": "nope", "tools": []},
        "tool_call_parser 'nope' is not a parser this server knows; one of: "),
    "/separate_reasoning without a parser": (
        "/separate_reasoning", {"text": "hi", "reasoning_parser": ""},
        "reasoning_parser '' is not a parser this server knows; one of: "),
    "/separate_reasoning with an unknown parser": (
        "/separate_reasoning", {"text": "hi", "reasoning_parser": "nope"},
        "reasoning_parser 'nope' is not a parser this server knows"),
    "/generate with an empty input_embeds vector": (
        "/generate", {"input_embeds": [[]]}, "input_embeds[0] has 0 values; each position is a vector of "
        "this model's hidden size, 64"),
    "/generate with an empty list of prompts": ("/generate", {"text": []}, "text is an empty list"),
    "/classify with an empty list of prompts": (
        "/classify", {"input_ids": []}, "input_ids is an empty list: send at least one prompt"),
}


@pytest.mark.parametrize("case", CLIENT_ERRORS)
def test_client_errors_that_were_500s_get_400_with_a_message(server, case):
    path, body, message = CLIENT_ERRORS[case]
    r = post(server, path, body)
    assert r.status_code == 400 and message in error_message(r), r.text[:400]
    assert healthy(server.url)


def test_the_same_calls_written_right_are_served(server):
    r = post(server, "/parse_function_call", {"text": "hi", "tool_call_parser": "qwen25", "tools": []})
    assert r.status_code == 200 and r.json()["normal_text"] == "hi", r.text[:300]
    r = post(server, "/separate_reasoning", {"text": "<think>a</think>b", "reasoning_parser": "qwen3"})
    assert r.status_code == 200 and (r.json()["reasoning_text"], r.json()["text"]) == ("a", "b"), r.text[:300]


def test_ollama_without_num_predict_replies_within_the_context(server):
    """Ollama's routes asked for 2048 new tokens by default (500 when the context has less room):
    now, as /v1/* without max_tokens, the reply runs at most to the end of the context. A prompt
    that leaves about 16 tokens of the 4096-token context (upstream: 500) is answered."""
    unit = "北京是中华人民共和国的首都。"
    per_unit = post(server, "/tokenize", {"prompt": unit}).json()["count"]
    prompt = unit * ((4096 - 16) // per_unit)
    r = post(server, "/api/generate", {"prompt": prompt, "model": "", "stream": False})
    assert r.status_code == 200, r.text[:300]
    reply = r.json()
    assert reply["done"] and 0 < reply["eval_count"] <= 4096 - reply["prompt_eval_count"] <= 16 + per_unit
    with requests.post(f"{server.url}/api/generate", headers=bearer(API_KEY), stream=True, timeout=120,
                       json={"prompt": "你好", "model": "", "options": {"num_predict": 3}}) as r:
        chunks = [json.loads(line) for line in r.iter_lines() if line]
    assert r.status_code == 200 and [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]


@pytest.mark.parametrize("path, body, message", [
    ("/v1/chat/completions", {**CHAT, "max_tokens": "many"},
     "max_tokens: Input should be a valid integer, unable to parse string as an integer"),
    ("/v1/chat/completions", {"model": "megrez-moe", "messages": [{"role": "user"}]},
     "messages[0].content: Field required"),
    ("/v1/completions", {"model": "megrez-moe"}, "prompt: Field required"),
])
def test_validation_errors_name_the_field_and_the_problem_and_no_server_file(server, path, body, message):
    r = post(server, path, body)
    assert r.status_code == 400 and message in error_message(r), r.text[:400]
    assert not SERVER_CODE_LOCATION.search(r.text), r.text[:400]


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {**CHAT, "max_tokens": 4, "temperature": 0.7, "seed": 42}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 4, "seed": 42, "stream": True}),  # the checkpoint's 0.7
    ("/v1/completions", {**COMPLETION, "max_tokens": 4, "seed": 42}),
    ("/generate", {"text": "你好", "sampling_params": {"max_new_tokens": 4, "sampling_seed": 42}}),
])
def test_a_seed_sglang_would_drop_is_refused_saying_why(server, path, body):
    """SGLang applies per-request seeds only with --enable-deterministic-inference (CUDA); without
    it three calls with seed 42 gave three texts."""
    r = post(server, path, body)
    assert r.status_code == 400 and "seed is not honoured by this server" in error_message(r), r.text[:300]
    assert "--enable-deterministic-inference" in error_message(r)


def test_a_seed_with_greedy_decoding_is_accepted_and_the_text_repeats(server):
    texts = []
    for _ in range(2):
        r = post(server, "/v1/chat/completions", {**CHAT, "max_tokens": 8, "temperature": 0, "seed": 1234})
        assert r.status_code == 200, r.text[:300]
        texts.append(r.json()["choices"][0]["message"]["content"])
    assert texts[0] == texts[1] and texts[0]


def test_echo_with_max_tokens_0_returns_the_prompts_logprobs(server):
    """OpenAI's legacy API: the prompt's logprobs and nothing generated (lm-evaluation-harness
    and other log-likelihood clients); the same values as the prompt part of max_tokens 1."""
    prompt = [5, 600, 1200, 37, 99]
    zero = post(server, "/v1/completions", {**COMPLETION, "prompt": prompt, "echo": True, "logprobs": 1,
                                            "max_tokens": 0, "temperature": 0})
    one = post(server, "/v1/completions", {**COMPLETION, "prompt": prompt, "echo": True, "logprobs": 1,
                                           "max_tokens": 1, "temperature": 0})
    assert zero.status_code == 200 and one.status_code == 200, zero.text[:300]
    choice = zero.json()["choices"][0]
    assert zero.json()["usage"]["completion_tokens"] == 0 and choice["finish_reason"] == "length"
    logprobs = choice["logprobs"]["token_logprobs"]
    assert len(logprobs) == len(prompt) and logprobs[0] is None and all(x < 0 for x in logprobs[1:])
    assert logprobs == pytest.approx(one.json()["choices"][0]["logprobs"]["token_logprobs"][:len(prompt)],
                                     abs=1e-4)
    r = post(server, "/v1/completions", {**COMPLETION, "max_tokens": 0})  # without echo: as OpenAI
    assert r.status_code == 400 and "max_tokens: Value error, max_tokens must be positive" in error_message(r)


def test_echo_with_logprobs_0_is_refused_rather_than_answered_without_the_prompts_logprobs(server):
    r = post(server, "/v1/completions", {**COMPLETION, "max_tokens": 1, "echo": True, "logprobs": 0})
    assert r.status_code == 400 and "ask for logprobs = 1" in error_message(r), r.text[:300]


def test_echo_with_logprobs_logs_no_warning(server):
    for _ in range(3):
        assert post(server, "/v1/completions", {**COMPLETION, "max_tokens": 1, "echo": True,
                                                "logprobs": 1}).status_code == 200
    assert "Echo is not compatible with logprobs" not in server.log_path.read_text(errors="replace")


def test_the_server_log_holds_no_key(server):
    log = server.log_path.read_text(errors="replace")
    assert "'api_key': '<redacted>', 'admin_api_key': '<redacted>'" in log  # SGLang's server_args line
    assert API_KEY not in log and ADMIN_KEY not in log


# ------------------------------------------------------------------------- servers of their own


def live(processes: list[psutil.Process]) -> list[str]:
    return [f"{p.pid} {process_title(p)[:40]}" for p in processes if is_alive(p)]


DRAIN_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def sigterm_during_streams(tiny_checkpoint, tmp_path_factory):
    """A server (API key only, --shutdown-timeout 10) SIGTERMed while 32 streams of 256 tokens are
    in flight, right after a few requests with "Connection: close" (as health probes send them):
    the server closes those connections first, which leaves them in TIME_WAIT on its port."""
    log = tmp_path_factory.mktemp("sigterm") / "server.log"
    server = ServerProcess(tiny_checkpoint, command=[str(ROOT / "launch_server.sh")], api_key=API_KEY,
                           log_path=log, args=["--shutdown-timeout", str(DRAIN_TIMEOUT_S)])
    supervisor = psutil.Process(server.process.pid)
    started = [supervisor, *supervisor.children(recursive=True)]
    streaming = threading.Semaphore(0)

    def stream(i: int) -> str:
        """How the stream ended: "length"/"stop"/"abort" (its finish_reason, then [DONE]), or "cut"."""
        first = True
        try:
            # 32 x 256 tokens fit the CPU KV cache at once: every request runs, none waits in the queue
            with requests.post(f"{server.url}/generate", headers=bearer(API_KEY), stream=True, timeout=600,
                               json={"text": f"第{i}个故事：", "stream": True,
                                     "sampling_params": {"max_new_tokens": 256, "ignore_eos": True}}) as r:
                finish = None
                for line in r.iter_lines():
                    if not line.startswith(b"data: "):
                        continue
                    if first:
                        streaming.release()
                        first = False
                    if line == b"data: [DONE]":
                        return finish["type"] if finish else "[DONE] without a finish_reason"
                    finish = json.loads(line.removeprefix(b"data: "))["meta_info"]["finish_reason"] or finish
                return "cut"
        except requests.RequestException:
            return "cut"
        finally:
            if first:
                streaming.release()

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(stream, i) for i in range(32)]
        all_streaming = all(streaming.acquire(timeout=600) for _ in range(32))
        for _ in range(3):
            assert requests.get(f"{server.url}/health", headers={"Connection": "close"}, timeout=30).ok
        in_flight = sum(not f.done() for f in futures)
        stopping = time.monotonic()
        status = server.stop(timeout_s=300)
        stop_s = time.monotonic() - stopping
        outcomes = [f.result(timeout=60) for f in futures]
    time.sleep(1)
    yield SimpleNamespace(port=server.port, status=status, in_flight=in_flight if all_streaming else 0,
                          outcomes=outcomes, stop_s=stop_s, left=live(started), log=log)


@pytest.mark.slow
def test_sigterm_while_32_streams_are_in_flight_ends_every_stream_and_exits_0(sigterm_during_streams):
    outcome = sigterm_during_streams
    assert outcome.in_flight == 32  # every stream had started and none had ended when SIGTERM came
    # each stream finished, or was aborted at the drain deadline: a finish_reason, then [DONE]
    assert set(outcome.outcomes) <= {"length", "abort"}, outcome.outcomes
    assert outcome.status == 0, outcome.log.read_text()[-2000:]
    # the drain deadline, SGLang's 5 s polling of it, and stopping its workers
    assert outcome.stop_s < DRAIN_TIMEOUT_S + 30, outcome.stop_s


@pytest.mark.slow
def test_sigterm_leaves_no_process_behind(sigterm_during_streams):
    assert sigterm_during_streams.left == []


def binds_without_reuseaddr(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def restarted(sigterm_during_streams, tiny_checkpoint, tmp_path_factory):
    """The stopped server's port, started again at once (API key only, no admin key)."""
    port = sigterm_during_streams.port
    time_wait = [c for c in psutil.net_connections("tcp")
                 if c.laddr and c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT]
    plain_bind_refused = not binds_without_reuseaddr(port)
    log = tmp_path_factory.mktemp("restarted") / "server.log"
    server = ServerProcess(tiny_checkpoint, port=port, command=[str(ROOT / "launch_server.sh")],
                           api_key=API_KEY, log_path=log)
    yield SimpleNamespace(server=server, time_wait=len(time_wait), plain_bind_refused=plain_bind_refused)
    server.stop()


@pytest.mark.slow
def test_a_stopped_server_restarts_on_its_port_at_once(restarted):
    # the situation that made the old pre-check (a bind without SO_REUSEADDR) refuse the port
    assert restarted.time_wait > 0 and restarted.plain_bind_refused
    assert generates(restarted.server.url)


@pytest.mark.slow
def test_without_an_admin_key_control_endpoints_answer_403_to_everyone(restarted):
    url = restarted.server.url
    for route in (r for r in sglang_routes() if r.control):
        for method in route.methods - {"HEAD"}:
            for key in (API_KEY, None):
                r = requests.request(method, f"{url}{route.url_path}", headers=bearer(key), timeout=30)
                assert r.status_code == 403, (method, route.path, key, r.status_code)
    assert generates(url)


@pytest.mark.slow
def test_killing_the_scheduler_stops_everything_with_a_one_line_reason(restarted):
    server = restarted.server
    supervisor = psutil.Process(server.process.pid)
    started = [supervisor, *supervisor.children(recursive=True)]
    scheduler = next(p for p in started if process_title(p).startswith("sglang::scheduler"))
    killed_at = time.monotonic()
    scheduler.send_signal(signal.SIGKILL)
    status = server.process.wait(timeout=60)
    elapsed = time.monotonic() - killed_at
    assert status == 1 and elapsed < 10, (status, elapsed)
    errors = [line for line in server.log_path.read_text().splitlines() if line.startswith("launch_server:")]
    assert errors == [f"launch_server: error: SGLang's scheduler process (pid {scheduler.pid}) died; "
                      "every process of the server is stopped"]
    assert live(started) == []
