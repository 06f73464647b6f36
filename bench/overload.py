"""Overload: a short chat's latency and the server's throughput under K greedy clients, without
and with the work bound (--max-pending-tokens).

    python -m bench.overload [--model PATH] [--clients 2,8,24,64] [--window 15] [--chat-timeout 20]

For each mode it starts launch_server.sh (the trained tiny checkpoint unless --model; "without":
--max-pending-tokens 10^9, i.e. no bound; "with": the default, the KV pool), then for each K:
K clients each send, again and again, the largest request the per-request limits admit (n =
--max-n samples, max_tokens to the end of the context, ignore_eos), honouring Retry-After on a
429 (as the openai client does); after --warmup seconds, a short chat ("1+1=?", 16 tokens,
greedy) is sent --chats times in a row (each given --chat-timeout seconds: a longer wait is
reported as a timeout), and the scheduler's decode throughput (its "gen throughput" log lines)
is averaged over the window. Then every request is aborted (/abort_request, admin key) before
the next K. K = 2 is below the default bound (two of these requests fit the KV pool): there the
two modes must give the same throughput.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from datetime import datetime

import psutil
import requests

from megrez_sglang.serving.hardening import DEFAULT_MAX_N
from megrez_sglang.serving.server import SERVED_MODEL_NAME, ServerProcess

from .report import print_table, write_json

KEY, ADMIN_KEY = "sk-bench", "sk-bench-admin"
HEADERS = {"Authorization": f"Bearer {KEY}"}
SHORT = {"model": SERVED_MODEL_NAME, "messages": [{"role": "user", "content": "1+1=?"}], "max_tokens": 16,
         "temperature": 0}
THROUGHPUT = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] Decode batch"
                        r".*gen throughput \(token/s\): ([\d.]+)")
UNBOUNDED = 10 ** 9


def machine_load() -> str:
    one, five, _ = psutil.getloadavg()
    return f"load average {one:.1f} (1 min) {five:.1f} (5 min) on {psutil.cpu_count()} cores"


class GreedyClients:
    """K threads sending the largest admitted request in a loop, honouring Retry-After."""

    def __init__(self, url: str, body: dict, k: int):
        self.url, self.body, self.stop = url, body, threading.Event()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(k)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                r = requests.post(f"{self.url}/v1/chat/completions", json=self.body, headers=HEADERS,
                                  timeout=900)
            except requests.RequestException:
                continue
            if not self.stop.is_set():
                self.statuses.append(r.status_code)
            if r.status_code == 429:
                self.stop.wait(float(r.headers.get("Retry-After", 1)))

    def finish(self, url: str):
        self.stop.set()
        deadline = time.monotonic() + 120
        while any(t.is_alive() for t in self.threads) and time.monotonic() < deadline:
            requests.post(f"{url}/abort_request", json={"abort_all": True},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
            for t in self.threads:
                t.join(timeout=0.5)


def short_chats(url: str, count: int, timeout: float) -> list[float | None]:
    """Seconds per short chat; None: no answer within `timeout` (the rest are not sent); a 429 is
    recorded as its (negative) refusal time."""
    out: list[float | None] = []
    for _ in range(count):
        start = time.perf_counter()
        try:
            r = requests.post(f"{url}/v1/chat/completions", json=SHORT, headers=HEADERS, timeout=timeout)
        except requests.Timeout:
            out.append(None)
            break
        elapsed = time.perf_counter() - start
        out.append(-elapsed if r.status_code == 429 else elapsed)
    return out


def decode_throughput(log_text: str, start: float, end: float) -> float | None:
    values = [float(m.group(2)) for line in log_text.splitlines() if (m := THROUGHPUT.match(line))
              and start <= datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() <= end]
    return statistics.mean(values) if values else None


def run_mode(args, bound: int) -> list[dict]:
    import tempfile

    log = tempfile.NamedTemporaryFile(prefix="bench-overload-", suffix=".log", delete=False).name
    # the scheduler logs its decode rate every --decode-log-interval steps (SGLang's default, 40,
    # left most windows without a figure on a slow machine)
    server = ServerProcess(args.model, api_key=KEY, admin_api_key=ADMIN_KEY, log_path=log,
                           args=["--max-pending-tokens", str(bound)] if bound else [],
                           extra=["--decode-log-interval", "1"])
    rows = []
    try:
        url = server.url
        models = requests.get(f"{url}/v1/models", headers=HEADERS, timeout=30).json()
        context = models["data"][0]["max_model_len"]
        prompt_tokens = requests.post(f"{url}/v1/chat/completions", json={**SHORT, "max_tokens": 1},
                                      headers=HEADERS, timeout=120).json()["usage"]["prompt_tokens"]
        largest = {**SHORT, "n": args.max_n, "max_tokens": context - prompt_tokens - 1, "temperature": 0.7,
                   "ignore_eos": True}
        short_chats(url, 1, 120)  # warm-up
        idle = short_chats(url, args.chats, 120)
        rows.append({"clients": 0, "chats_s": idle, "throughput": None, "statuses": [],
                     "load": machine_load()})
        for k in args.clients:
            clients = GreedyClients(url, largest, k)
            time.sleep(args.warmup)
            start = time.time()
            chats = short_chats(url, args.chats, args.chat_timeout)
            remaining = args.window - (time.time() - start)
            if remaining > 0:
                time.sleep(remaining)
            end = time.time()
            load = machine_load()
            statuses = list(clients.statuses)
            clients.finish(url)
            time.sleep(2)
            rows.append({"clients": k, "chats_s": chats, "statuses": statuses, "load": load,
                         "throughput": decode_throughput(open(log).read(), start, end)})
            print(f"  bound {bound or 'default'}, K={k}: chats {chats}, statuses {len(statuses)}, {load}",
                  flush=True)
    finally:
        server.stop()
    return rows


def describe(chats: list[float | None], timeout: float) -> str:
    answered = [c for c in chats if c is not None and c >= 0]
    refused = [-c for c in chats if c is not None and c < 0]
    parts = []
    if answered:
        parts.append(f"{statistics.median(answered):.2f} s")
    if refused:
        parts.append(f"{len(refused)}x 429 in {max(refused) * 1000:.0f} ms")
    if None in chats:
        parts.append(f"> {timeout:g} s (timed out)")
    return ", ".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint to serve (default: the trained tiny checkpoint)")
    p.add_argument("--clients", default="2,8,24,64")
    p.add_argument("--chats", type=int, default=3)
    p.add_argument("--chat-timeout", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=8.0, help="seconds of load before the chats")
    p.add_argument("--window", type=float, default=15.0, help="seconds the throughput is averaged over")
    p.add_argument("--max-n", type=int, default=DEFAULT_MAX_N)
    p.add_argument("--out")
    args = p.parse_args()
    args.clients = [int(k) for k in args.clients.split(",")]
    print(f"before: {machine_load()}")
    results = {"without": run_mode(args, UNBOUNDED), "with": run_mode(args, 0)}
    table = []
    for (mode, rows) in results.items():
        for row in rows:
            statuses = row["statuses"]
            shed = f"{statuses.count(429) / len(statuses):.0%} of {len(statuses)}" if statuses else "-"
            table.append([mode, row["clients"] or "idle", describe(row["chats_s"], args.chat_timeout), shed,
                          f"{row['throughput']:.0f}" if row["throughput"] else "-", row["load"]])
    print_table("a short chat (16 tokens, greedy) beside K clients each sending n=8 x max_tokens to the "
                "context (ignore_eos), without and with the work bound",
                ["bound", "K", "short chat (median)", "greedy answers that were 429", "decode tok/s",
                 "machine"],
                table)
    write_json("overload", {"model": args.model, "args": vars(args), "results": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
