"""launch_server.sh on the tiny checkpoint (CPU; the session's shared server): the card's curl
request, the openai client, SGLang's native API, radix-cache reuse, bad requests and concurrency.
Hostile requests, keys and faults (SIGTERM, restart, a killed scheduler): tests/server_hardening/."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
import requests

from .conftest import API_KEY, ROOT


def test_script_announces_the_url_once_healthy(server):
    assert server.announcement.strip().endswith(f"(OpenAI API: {server.url}/v1)")
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    models = requests.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert [m["id"] for m in models["data"]] == ["megrez-moe"]


def test_the_cards_curl_request(server):
    payload = {"model": "megrez-moe", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "世界上最高的山峰是哪座？"}]}]}
    out = subprocess.run(
        ["curl", "--silent", "--location", f"{server.url}/v1/chat/completions",
         "--header", "Content-Type: application/json", "--header", f"Authorization: Bearer {API_KEY}",
         "--data", json.dumps(payload, ensure_ascii=False), "--write-out", "\n%{http_code}"],
        capture_output=True, text=True, check=True).stdout
    body, code = out.rsplit("\n", 1)
    assert code == "200"
    reply = json.loads(body)
    assert reply["model"] == "megrez-moe" and reply["choices"][0]["message"]["role"] == "assistant"
    # the list-of-parts content went through the Megrez chat template (default system prompt + turn)
    assert reply["usage"]["prompt_tokens"] > 40


def test_openai_chat_completion(client):
    r = client.chat.completions.create(model="megrez-moe", max_tokens=12, temperature=0.7, top_p=0.9,
                                       messages=[{"role": "user", "content": "世界上最高的山峰是哪座？"}])
    assert r.choices[0].finish_reason in ("length", "stop")
    assert isinstance(r.choices[0].message.content, str) and r.usage.completion_tokens <= 12


def test_openai_streaming(client):
    stream = client.chat.completions.create(model="megrez-moe", max_tokens=12, stream=True,
                                            messages=[{"role": "user", "content": "你好"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text
    finish_reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish_reasons == ["length"]


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["A", "B", "C", "D"]}},
                 "required": ["answer"], "additionalProperties": False}


def test_json_schema_response_parses_and_matches(client):
    for _ in range(3):
        r = client.chat.completions.create(
            model="megrez-moe", max_tokens=32, temperature=0.7,
            messages=[{"role": "user", "content": "Which is right? A, B, C or D?"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "choice", "schema": ANSWER_SCHEMA, "strict": True}})
        jsonschema.validate(json.loads(r.choices[0].message.content), ANSWER_SCHEMA)


def test_native_generate_with_a_regex(server):
    r = requests.post(f"{server.url}/generate", headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"text": "答案：", "sampling_params": {"max_new_tokens": 8, "temperature": 0.7,
                                                                "regex": "[A-D]"}}, timeout=60)
    assert r.status_code == 200 and r.json()["text"] in ("A", "B", "C", "D")


def test_shared_prefix_is_a_radix_cache_hit(client):
    system = "你是一个严谨的助手。" + "请仔细阅读下面的材料并回答问题。" * 20
    usage = []
    for question in ("长江有多长？", "黄河在哪里？"):
        r = client.chat.completions.create(model="megrez-moe", max_tokens=4, messages=[
            {"role": "system", "content": system}, {"role": "user", "content": question}])
        usage.append(r.usage)
    # the shared system turn
    assert usage[1].prompt_tokens_details.cached_tokens >= 0.9 * usage[0].prompt_tokens


def chat(server, body, key=API_KEY, raw: str | None = None):
    return requests.post(f"{server.url}/v1/chat/completions", timeout=60,
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                         data=raw if raw is not None else json.dumps(body))


def user(text="hi", **kw):
    return {"model": "megrez-moe", "messages": [{"role": "user", "content": text}], "max_tokens": 4, **kw}


@pytest.mark.parametrize("name, request_kw, status, message", [
    ("prompt longer than the context", dict(body=user("北京是中华人民共和国的首都。" * 3000)), 400,
     "longer than the model's context length"),
    ("invalid regex", dict(body=user(regex="[a-")), 400, "Failed to compile regex"),
    ("invalid JSON schema", dict(body=user(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "nonsense"}}})), 400, "Failed to compile json"),
    ("negative max_tokens", dict(body=user(max_tokens=-5)), 400, "max_new_tokens must be at least 0"),
    ("malformed body", dict(body=None, raw='{"model": "megrez-moe", "messages": [{"role":'), 400,
     "JSON decode error"),
    ("wrong API key", dict(body=user(), key="sk-wrong"), 401, ""),
])
def test_bad_request_gets_a_4xx_with_a_message_and_the_server_stays_healthy(server, name, request_kw,
                                                                             status, message):
    r = chat(server, **request_kw)
    assert r.status_code == status, r.text[:500]
    assert message in r.text
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    assert chat(server, user()).status_code == 200


def test_32_concurrent_requests_all_succeed(client):
    def one(i):
        return client.chat.completions.create(model="megrez-moe", max_tokens=8, temperature=0.7,
                                              messages=[{"role": "user", "content": f"问题 {i}：你好"}])

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(one, range(32)))
    assert all(r.choices[0].finish_reason in ("length", "stop") for r in replies)


def test_missing_model_path_and_taken_port_fail_clearly(server):
    missing = subprocess.run([str(ROOT / "launch_server.sh"), "/nonexistent/megrez"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "launch_server: error: model path '/nonexistent/megrez' does not exist" in missing.stderr
    port = int(server.url.rsplit(":", 1)[1])
    # The shared server holds the port (were it gone, this would start a server that outlives the test)
    assert requests.get(f"{server.url}/health", timeout=30).status_code == 200
    taken = subprocess.run([str(ROOT / "launch_server.sh"), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in taken.stderr
