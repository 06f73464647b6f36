"""Requests to the server under test, and what its replies say."""

from __future__ import annotations

import re

import requests

from ..conftest import API_KEY

# what an error message must never show: where in the server's code it was raised
SERVER_CODE_LOCATION = re.compile(r'File "|\.py\b|, line \d+')

CHAT = {"model": "megrez-moe", "messages": [{"role": "user", "content": "你好"}]}
COMPLETION = {"model": "megrez-moe", "prompt": "你好"}


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


def scheduler_load(url: str) -> dict:
    loads = requests.get(f"{url}/v1/loads", headers=bearer(API_KEY), timeout=30).json()["loads"]
    return loads[0]


def post(server, path: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}{path}", headers=bearer(API_KEY), json=body, timeout=120, **kwargs)


def nothing_queued_or_running(url: str) -> bool:
    load = scheduler_load(url)
    return (load["num_running_reqs"], load["num_waiting_reqs"]) == (0, 0)
