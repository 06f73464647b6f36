"""bench.retry_after: the soak's users send a shed request (429) again after its Retry-After and
nothing else, through the real openai client and requests, against a scripted HTTP server."""

from __future__ import annotations

import http.server
import json
import threading

import openai
import pytest
import requests

from bench.retry_after import HTTPError, shed_retry_after_s, until_admitted

CHAT_REPLY = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "2"}}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


@pytest.fixture
def scripted():
    """A server answering each POST with the next (status, headers) of `answers`; 200 is the chat
    reply above. `answers` and the count of requests received are the fixture's fields."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.received += 1
            status, headers = state.answers.pop(0)
            body = json.dumps(CHAT_REPLY if status == 200 else
                              {"error": {"message": f"status {status}", "code": status}}).encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json",
                                "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class State:
        answers: list = []
        received = 0

    state = State()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()


def openai_chat(url: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
    return lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "1+1"}])


def raw_generate(url: str):
    def call():
        r = requests.post(f"{url}/generate", json={"text": "x"}, timeout=10)
        if r.status_code != 200:
            raise HTTPError(r.status_code, r.text, r.headers.get("Retry-After"))
        return r.json()
    return call


@pytest.mark.parametrize("client", [openai_chat, raw_generate])
def test_a_shed_request_is_sent_again_after_each_retry_after(scripted, client):
    scripted.answers = [(429, {"Retry-After": "3"}), (429, {"Retry-After": "7"}), (200, {})]
    waits = []
    reply, shed = until_admitted(client(scripted.url), sleep=waits.append)
    assert (shed, waits, scripted.received) == (2, [3.0, 7.0], 3)
    content = reply["choices"][0]["message"]["content"] if isinstance(reply, dict) else \
        reply.choices[0].message.content
    assert content == "2"


@pytest.mark.parametrize("client", [openai_chat, raw_generate])
def test_a_server_error_is_not_sent_again(scripted, client):
    """A 500 after a 429 is the soak's error: it is raised, not resent."""
    scripted.answers = [(429, {"Retry-After": "1"}), (500, {}), (200, {})]
    waits = []
    with pytest.raises((openai.InternalServerError, HTTPError)) as raised:
        until_admitted(client(scripted.url), sleep=waits.append)
    assert (waits, scripted.received) == ([1.0], 2)
    assert getattr(raised.value, "status_code", getattr(raised.value, "status", None)) == 500


def test_a_request_shed_more_often_than_allowed_fails_with_the_429(scripted):
    scripted.answers = [(429, {"Retry-After": "2"})] * 3
    waits = []
    with pytest.raises(openai.RateLimitError):
        until_admitted(openai_chat(scripted.url), sleep=waits.append, max_retries=2)
    assert (waits, scripted.received) == ([2.0, 2.0], 3)


def test_retry_after_is_read_within_the_openai_clients_limits():
    assert shed_retry_after_s(HTTPError(429, "", "120")) == 60.0
    assert shed_retry_after_s(HTTPError(429, "", "Wed, 21 Oct 2026 07:28:00 GMT")) == 1.0
    assert shed_retry_after_s(HTTPError(429, "", None)) == 1.0
    assert shed_retry_after_s(HTTPError(503, "", "5")) is None
    assert shed_retry_after_s(ValueError("x")) is None
