"""Ollama's routes reply within the context when num_predict is unset."""

from __future__ import annotations

import json

import requests

from ..conftest import API_KEY
from .replies import (
    bearer,
    post,
)


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
