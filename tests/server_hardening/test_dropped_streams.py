"""64 mixed clients, 8 of them hanging up on their streams, leave nothing behind."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import requests

from ..conftest import API_KEY
from .replies import (
    bearer,
    healthy,
    scheduler_load,
)

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
