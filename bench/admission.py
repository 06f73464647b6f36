"""Admission limits: what the largest request launch_server.sh admits costs everyone else, and
what it refuses.

    python -m bench.admission [--model PATH | --base-url URL] [--chats 5] [--chat-tokens 32]

Without --base-url it serves --model (default: the trained tiny checkpoint, what launch_server.sh
serves without a model path) with launch_server.sh's default limits for the duration. Measured:

1. a normal chat's latency on the idle server (median of --chats, greedy, --chat-tokens tokens);
2. the same chats while the largest request the limits admit runs: n = --max-n samples, each
   as long as the context allows (ignore_eos), i.e. n x max_tokens at the per-request token
   limit; the ratio to (1) is the figure (the target: within 2x);
3. how long the server takes to refuse the request that held it for minutes upstream
   ("n": 25000, "max_tokens": 2) and that nothing of it ran.

MEGREZ_API_KEY, when set, is sent as the bearer key (and given to the server it starts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import requests

from megrez_sglang.serving.hardening import API_KEY_ENV, DEFAULT_MAX_N
from megrez_sglang.serving.server import SERVED_MODEL_NAME, ServerProcess

from .report import print_table, write_json

CHAT = [{"role": "user", "content": "世界上最高的山峰是哪座？"}]


def post(url: str, path: str, body: dict, key: str | None, timeout: float = 600) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=timeout,
                         headers={"Authorization": f"Bearer {key}"} if key else {})


def chat(url: str, key: str | None, timeout: float = 600, **params) -> requests.Response:
    return post(url, "/v1/chat/completions", {"model": SERVED_MODEL_NAME, "messages": CHAT, **params}, key,
                timeout)


def chat_latencies(url: str, key: str | None, count: int, tokens: int) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        r = chat(url, key, max_tokens=tokens, temperature=0, ignore_eos=True)
        r.raise_for_status()
        latencies.append(time.perf_counter() - start)
    return latencies


def loads(url: str, key: str | None) -> dict:
    r = requests.get(f"{url}/v1/loads", timeout=30, headers={"Authorization": f"Bearer {key}"} if key else {})
    return r.json()["loads"][0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint to serve (default: the trained tiny checkpoint)")
    p.add_argument("--base-url", help="a running launch_server.sh server (nothing is started)")
    p.add_argument("--chats", type=int, default=5, help="chats per measurement (median)")
    p.add_argument("--chat-tokens", type=int, default=32)
    p.add_argument("--max-n", type=int, default=DEFAULT_MAX_N, help="the server's --max-n")
    p.add_argument("--out")
    args = p.parse_args()
    key = os.environ.get(API_KEY_ENV) or None
    server = None
    if args.base_url is None:
        server = ServerProcess(args.model, api_key=key)
    url = args.base_url or server.url
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        pool = requests.get(f"{url}/server_info", timeout=30, headers=headers).json()["max_total_num_tokens"]
        models = requests.get(f"{url}/v1/models", timeout=30, headers=headers).json()
        context = models["data"][0]["max_model_len"]
        prompt_tokens = chat(url, key, max_tokens=1).json()["usage"]["prompt_tokens"]
        # the largest request the default limits admit: n samples, each to the end of the context,
        # n x max_tokens within the KV pool
        max_tokens = min(context - prompt_tokens - 1, pool // args.max_n)
        largest = {"n": args.max_n, "max_tokens": max_tokens, "temperature": 0.7, "ignore_eos": True}

        chat_latencies(url, key, 1, args.chat_tokens)  # warm-up
        idle = chat_latencies(url, key, args.chats, args.chat_tokens)

        outcome = {}

        def run_largest():
            start = time.perf_counter()
            r = chat(url, key, timeout=3600, **largest)
            outcome.update(status=r.status_code, seconds=time.perf_counter() - start,
                           completion_tokens=r.json().get("usage", {}).get("completion_tokens"))

        worker = threading.Thread(target=run_largest)
        worker.start()
        deadline = time.monotonic() + 60
        while loads(url, key)["num_running_reqs"] < args.max_n and time.monotonic() < deadline:
            time.sleep(0.2)
        running = loads(url, key)["num_running_reqs"]
        busy = chat_latencies(url, key, args.chats, args.chat_tokens)
        still_running = worker.is_alive()
        worker.join()

        start = time.perf_counter()
        refused = chat(url, key, n=25000, max_tokens=2)
        refusal_s = time.perf_counter() - start
        after = loads(url, key)
    finally:
        if server is not None:
            server.stop()

    ratio = statistics.median(busy) / statistics.median(idle)
    served = args.base_url or args.model or "launch_server.sh's default model (the trained tiny checkpoint)"
    print_table(f"a {args.chat_tokens}-token chat (greedy), median of {args.chats}, on {served}",
                ["server", "median s", "min s", "max s"],
                [["idle", statistics.median(idle), min(idle), max(idle)],
                 [f"running n={args.max_n} x max_tokens={max_tokens} ({running} sequences)",
                  statistics.median(busy), min(busy), max(busy)]])
    print(f"\nlatency while the largest admitted request runs: {ratio:.2f}x idle (target: within 2x)"
          f"{'' if still_running else '; WARNING: it ended before the chats did'}")
    print(f"the largest admitted request: HTTP {outcome['status']}, {outcome['completion_tokens']} tokens "
          f"in {outcome['seconds']:.1f} s (context {context}, KV pool {pool} tokens)")
    print(f'"n": 25000 refused with HTTP {refused.status_code} in {refusal_s * 1000:.0f} ms: '
          f'{refused.json().get("message", refused.text)[:120]}; then {after["num_running_reqs"]} running, '
          f'{after["num_waiting_reqs"]} waiting')
    write_json("admission", {"model": args.model, "base_url": args.base_url, "chat_tokens": args.chat_tokens,
                             "context": context, "kv_pool": pool, "largest": largest,
                             "idle_s": idle, "busy_s": busy, "ratio": ratio, "running_sequences": running,
                             "largest_outcome": outcome, "refusal": {"status": refused.status_code,
                                                                    "seconds": refusal_s}}, args.out)
    return 0 if ratio <= 2 and refused.status_code == 400 else 1


if __name__ == "__main__":
    sys.exit(main())
