"""Soak: minutes of mixed traffic from 16 clients against launch_server.sh; requests served,
errors (must be 0), latency per minute, and the server processes' memory at the start and the end.

    python -m bench.soak [--model PATH | --base-url URL] [--minutes 10] [--warmup-minutes 1]
                         [--clients 16] [--seed 0] [--out PATH]

Every client loops over the mix, each starting at another kind: a chat completion (openai
client), a streamed chat read to the end, a /generate stream the client hangs up on after half of
its tokens, a chat under response_format json_schema (the reply validated with jsonschema), a
regex-constrained /generate, and a frontend-language program forking 3 branches
(solve_math_self_consistent, k=3: one request). Half of the prompts come from small fixed pools,
half are fresh, so that the radix cache sees hits and misses. An error is an exception, a non-2xx
reply, or a reply failing its own check (finish_reason, schema, regex, a box in every branch);
every one is counted with its kind, the first few are printed. Latencies are those of the
requests served (a dropped stream's: until the client hung up). Per minute it prints requests
served, errors, p50 and p99 latency, and, to read them on a shared machine, the server's RSS and
CPU use (% of one core), this process's (the clients') and the load average.

Without --base-url it serves --model (default: what launch_server.sh serves without a path, the
trained tiny checkpoint) for the duration, with a fresh API key sent as bearer; the server's log
goes to a temporary file, named at the start. --base-url measures a running server or router
(MEGREZ_API_KEY, when set, is its key). Memory: the summed RSS of the server's process tree
(supervisor, `sglang serve`, scheduler, detokenizer) before the traffic, after --warmup-minutes
of it, and at the end; with --base-url only when the server runs on this machine (found from the
process listening on its port). At the end the server must be healthy and idle (/v1/loads).
Exit status 1 when a request failed, the server was not healthy and idle at the end, or its RSS
grew by RSS_GROWTH_LIMIT_PCT or more after the warm-up. A benchmark, not a test: figures in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import openai
import psutil
import requests

from megrez_sglang.model_path import TRAINED_CHECKPOINT
from megrez_sglang.programs import answer_json_schema, endpoint, solve_math_self_consistent
from megrez_sglang.server import SERVED_MODEL_NAME, ServerProcess
from megrez_sglang.server_hardening import API_KEY_ENV
from megrez_sglang.tiny_corpus import choice_item, fact_items, random_math_key

from .report import print_table, write_json

KINDS = ("chat", "stream", "dropped_stream", "json", "regex", "program")
RSS_GROWTH_LIMIT_PCT = 5.0
HOT_SHARE = 0.5  # prompts drawn from the fixed pools (radix cache hits); the rest are fresh
HOT_POOL = 8  # fixed prompts per pool built here (the facts are a pool of their own)
CHAT_TOKENS, DROPPED_TOKENS, JSON_TOKENS, REGEX_TOKENS = 32, 32, 32, 12
PROGRAM_BRANCHES, PROGRAM_REASONING_TOKENS = 3, 32
VERDICT_REGEX = r"(是|否)，[0-9]{1,3}"
REQUEST_TIMEOUT_S = 300
IDLE_TIMEOUT_S = 60  # the end: how long the server may take to show 0 running, 0 waiting
SHOWN_ERRORS = 10
MIB = 1 << 20


class CheckFailed(Exception):
    """A reply that arrived (2xx) but fails its own check."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.kind = f"check: {check}"


class HTTPError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(f"{status}: {text[:300]}")
        self.kind = f"HTTP {status}"


@dataclass
class Outcome:
    kind: str
    start: float  # seconds since the traffic started
    end: float
    error: str | None = None  # its kind: "HTTP 500", "check: schema", an exception's name
    message: str = ""
    prompt_tokens: int = 0  # where the reply reports them (chat, JSON, regex)
    cached_tokens: int = 0

    @property
    def latency(self) -> float:
        return self.end - self.start


def error_kind(e: BaseException) -> str:
    if isinstance(e, CheckFailed | HTTPError):
        return e.kind
    if isinstance(e, openai.APIStatusError):
        return f"HTTP {e.status_code}"
    return type(e).__name__


# ----------------------------------------------------------------------------------------- traffic


class Prompts:
    """One client's prompts: HOT_SHARE of them from fixed pools shared by every client, the
    rest fresh (random numbers)."""

    def __init__(self, rng: random.Random, pools: dict[str, list]):
        self.rng, self.pools = rng, pools

    def pick(self, pool: str, fresh: Callable[[], object]):
        return self.rng.choice(self.pools[pool]) if self.rng.random() < HOT_SHARE else fresh()

    def math_question(self) -> str:
        op, a, b = random_math_key(self.rng)
        return f"计算：{a} {op} {b} = ?" if self.rng.random() < 0.5 else f"Compute {a} {op} {b}."

    def chat(self) -> str:
        return self.pick("facts", self.math_question)

    def story(self) -> str:
        return self.pick("completions", lambda: f"第{self.rng.randrange(10**6)}个故事：")

    def choice(self):
        return self.pick("choices", lambda: choice_item(self.rng, self.rng.choice(("zh", "en"))))

    def verdict(self) -> str:
        return self.pick("verdicts", lambda: f"问题 {self.rng.randrange(10**6)}：对吗？回答：")

    def question(self) -> str:
        return self.pick("questions", self.math_question)


def prompt_pools(seed: int) -> dict[str, list]:
    rng = random.Random(f"soak/{seed}")
    facts = fact_items()
    prompts = Prompts(rng, {})
    return {"facts": [i.prompt for i in facts if i.kind == "fact"],
            "completions": [i.prompt for i in facts if i.kind == "completion"],
            "choices": [choice_item(rng, ("zh", "en")[i % 2]) for i in range(HOT_POOL)],
            "verdicts": [f"问题 {i}：对吗？回答：" for i in range(HOT_POOL)],
            "questions": [prompts.math_question() for _ in range(HOT_POOL)]}


class Traffic:
    """The requests of the mix against one server; each method sends one, checks the reply and
    returns (prompt_tokens, cached_tokens) where the reply reports them, or raises."""

    def __init__(self, url: str, api_key: str | None):
        self.url = url
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # max_retries=0: a retried request would hide an error
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key or "none", max_retries=0,
                                    timeout=REQUEST_TIMEOUT_S)
        self.backend = endpoint(url, api_key=api_key)
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers.update(self.headers)
        return self._local.session

    def generate(self, body: dict, stream: bool = False) -> requests.Response:
        r = self.session.post(f"{self.url}/generate", json=body, stream=stream, timeout=REQUEST_TIMEOUT_S)
        if r.status_code != 200:
            text = r.text
            r.close()
            raise HTTPError(r.status_code, text)
        return r

    def chat(self, p: Prompts) -> tuple[int, int]:
        r = self.client.chat.completions.create(
            model=SERVED_MODEL_NAME, max_tokens=CHAT_TOKENS, temperature=0.7, top_p=0.9,
            messages=[{"role": "user", "content": p.chat()}])
        choice = r.choices[0]
        if choice.finish_reason not in ("length", "stop"):
            raise CheckFailed("finish_reason", f"finish_reason {choice.finish_reason!r}")
        if not isinstance(choice.message.content, str) or r.usage.completion_tokens > CHAT_TOKENS:
            raise CheckFailed("reply", f"content {choice.message.content!r}, "
                              f"{r.usage.completion_tokens} completion tokens (max {CHAT_TOKENS})")
        return usage_tokens(r.usage)

    def stream(self, p: Prompts) -> tuple[int, int]:
        finish, usage = [], None
        for chunk in self.client.chat.completions.create(
                model=SERVED_MODEL_NAME, max_tokens=CHAT_TOKENS, temperature=0.7, top_p=0.9,
                stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": p.chat()}]):
            finish += [c.finish_reason for c in chunk.choices if c.finish_reason]
            usage = chunk.usage or usage
        if len(finish) != 1 or finish[0] not in ("length", "stop"):
            raise CheckFailed("finish_reason", f"finish_reason(s) {finish} (one of length, stop expected)")
        return usage_tokens(usage) if usage else (0, 0)

    def dropped_stream(self, p: Prompts) -> tuple[int, int]:
        """Reads half of the stream's tokens, then hangs up (closes the connection)."""
        half, events = DROPPED_TOKENS // 2, 0
        body = {"text": p.story(), "stream": True,
                "sampling_params": {"max_new_tokens": DROPPED_TOKENS, "ignore_eos": True,
                                    "temperature": 0.7}}
        with self.generate(body, stream=True) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    events += 1
                    if events == half:
                        break
        if events != half:
            raise CheckFailed("stream", f"the stream ended after {events} events, before {half}")
        return 0, 0

    def json(self, p: Prompts) -> tuple[int, int]:
        item = p.choice()
        schema = answer_json_schema(item.letters)
        r = self.client.chat.completions.create(
            model=SERVED_MODEL_NAME, max_tokens=JSON_TOKENS, temperature=0.7,
            messages=[{"role": "user", "content": item.prompt}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "choice", "schema": schema, "strict": True}})
        choice = r.choices[0]
        if choice.finish_reason != "stop":
            raise CheckFailed("finish_reason", f"finish_reason {choice.finish_reason!r} "
                              f"(stop expected), content {choice.message.content!r}")
        try:
            jsonschema.validate(json.loads(choice.message.content), schema)
        except (ValueError, jsonschema.ValidationError) as e:
            raise CheckFailed("schema", f"{choice.message.content!r}: {str(e).splitlines()[0]}") from None
        return usage_tokens(r.usage)

    def regex(self, p: Prompts) -> tuple[int, int]:
        with self.generate({"text": p.verdict(), "sampling_params": {
                "max_new_tokens": REGEX_TOKENS, "temperature": 0.8, "regex": VERDICT_REGEX}}) as r:
            reply = r.json()
        if not re.fullmatch(VERDICT_REGEX, reply["text"]):
            raise CheckFailed("regex", f"{reply['text']!r} does not match {VERDICT_REGEX}")
        meta = reply["meta_info"]
        return meta.get("prompt_tokens", 0), meta.get("cached_tokens", 0)

    def program(self, p: Prompts) -> tuple[int, int]:
        vote = solve_math_self_consistent(p.question(), self.backend, k=PROGRAM_BRANCHES,
                                          reasoning_max_tokens=PROGRAM_REASONING_TOKENS,
                                          temperature=0.7, top_p=0.9)
        boxed = [s.answer for s in vote.samples]
        if len(boxed) != PROGRAM_BRANCHES or None in boxed:
            raise CheckFailed("program", f"branch answers {boxed} ({PROGRAM_BRANCHES} boxes expected)")
        return 0, 0


def usage_tokens(usage) -> tuple[int, int]:
    details = getattr(usage, "prompt_tokens_details", None)
    return usage.prompt_tokens, (getattr(details, "cached_tokens", 0) or 0) if details else 0


def client_loop(traffic: Traffic, index: int, pools: dict[str, list], seed: int, t0: float,
                deadline: float, outcomes: list[Outcome]) -> None:
    """One client: the mix in order from kind `index`, until the deadline (the request in flight
    then finishes)."""
    rng = random.Random(f"soak/{seed}/client/{index}")
    prompts = Prompts(rng, pools)
    i = index
    while time.monotonic() < deadline:
        kind = KINDS[i % len(KINDS)]
        i += 1
        start = time.monotonic()
        try:
            prompt_tokens, cached = getattr(traffic, kind)(prompts)
            outcomes.append(Outcome(kind, start - t0, time.monotonic() - t0, prompt_tokens=prompt_tokens,
                                    cached_tokens=cached))
        except Exception as e:  # noqa: BLE001  (every failure is counted, none stops the client)
            message = str(e).strip() or traceback.format_exc(limit=2).strip().splitlines()[-1]
            outcomes.append(Outcome(kind, start - t0, time.monotonic() - t0, error_kind(e),
                                    " ".join(message.split())[:400]))


# ------------------------------------------------------------------------------------------ summary


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency_row(outcomes: list[Outcome]) -> dict:
    served = [o.latency for o in outcomes if o.error is None]
    return {"requests": len(outcomes), "served": len(served), "errors": len(outcomes) - len(served),
            "p50_s": percentile(served, 50), "p99_s": percentile(served, 99)}


def per_minute(outcomes: list[Outcome], minutes: float) -> list[dict]:
    """A row per minute of traffic, by the minute each request finished in (those finishing
    after the end count in the last minute)."""
    n = max(1, math.ceil(minutes))
    buckets: list[list[Outcome]] = [[] for _ in range(n)]
    for o in outcomes:
        buckets[min(int(o.end // 60), n - 1)].append(o)
    return [{"minute": m + 1, **latency_row(b)} for m, b in enumerate(buckets)]


def per_kind(outcomes: list[Outcome]) -> list[dict]:
    return [{"kind": k, **latency_row([o for o in outcomes if o.kind == k])} for k in KINDS]


def growth_pct(before: int | None, after: int | None) -> float | None:
    return None if not before or after is None else 100.0 * (after - before) / before


def cached_share(outcomes: list[Outcome]) -> float | None:
    prompt = sum(o.prompt_tokens for o in outcomes if o.error is None)
    return 100.0 * sum(o.cached_tokens for o in outcomes if o.error is None) / prompt if prompt else None


def seconds(value: float | None) -> str:
    return number(value, 2)


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------- memory


def process_tree(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def tree_usage(root_pid: int) -> tuple[int, float]:
    """The summed RSS (bytes) and CPU time (user + system seconds) of the tree's processes."""
    rss, cpu = 0, 0.0
    for p in process_tree(root_pid):
        try:
            with p.oneshot():
                rss += p.memory_info().rss
                times = p.cpu_times()
                cpu += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return rss, cpu


@dataclass
class Sample:
    """The machine at one moment of the soak: the server's memory and CPU time (None when not
    measured), this process's CPU time (the clients'), the 1-minute load average."""

    t: float  # seconds since the traffic started
    rss: int | None
    server_cpu_s: float | None
    soak_cpu_s: float
    load1: float


def take_sample(t: float, root_pid: int | None) -> Sample:
    rss, cpu = tree_usage(root_pid) if root_pid is not None else (None, None)
    own = psutil.Process().cpu_times()
    return Sample(t, rss, cpu, own.user + own.system, os.getloadavg()[0])


def cpu_percent(samples: list[Sample], start: float, end: float, field: str) -> float | None:
    """CPU use (% of one core) between the last samples taken at or before `start` and `end`."""
    a = [x for x in samples if x.t <= start + 1e-9] or samples[:1]
    b = [x for x in samples if x.t <= end + 1e-9]
    if not a or not b or b[-1].t <= a[-1].t or getattr(b[-1], field) is None:
        return None
    return 100.0 * (getattr(b[-1], field) - getattr(a[-1], field)) / (b[-1].t - a[-1].t)


def describe_tree(root_pid: int) -> list[dict]:
    rows = []
    for p in process_tree(root_pid):
        try:
            title = " ".join(" ".join(p.cmdline()).split())
            rows.append({"pid": p.pid, "role": short_name(title), "process": title[:80],
                         "rss_mib": p.memory_info().rss / MIB})
        except psutil.NoSuchProcess:
            pass
    return rows


def short_name(title: str) -> str:
    """A server process's role, from its command line (SGLang's workers name themselves)."""
    if title.startswith("sglang::"):
        return title.split()[0].removeprefix("sglang::")
    for mark, name in (("megrez_sglang.server", "supervisor"), ("sglang.cli.main", "sglang serve"),
                       ("megrez_sglang.cluster", "cluster"), ("megrez_sglang.gateway", "router"),
                       ("multiprocessing.resource_tracker", "resource tracker")):
        if mark in title:
            return name
    return title.split("/")[-1][:24]


def local_server_root(url: str) -> tuple[int | None, str]:
    """The root of a running server's process tree on this machine: the process listening on
    the URL's port, or the topmost megrez_sglang supervisor above it (launch_server.sh, the
    cluster); None and why where it is not found here."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    local = {"localhost", "0.0.0.0", "::"} | {a.address for addresses in psutil.net_if_addrs().values()
                                                for a in addresses}
    try:
        address = socket.gethostbyname(host)
    except OSError:
        address = host
    if host not in local and address not in local:
        return None, f"{host} is not an address of this machine"
    try:
        listening = [c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid]
    except psutil.AccessDenied:
        listening = []
    if not listening:
        return None, f"no process of this user listens on port {port} here"
    root = psutil.Process(listening[0])
    for parent in root.parents():
        try:
            if "megrez_sglang" in " ".join(parent.cmdline()):
                root = parent
        except psutil.Error:
            pass
    return root.pid, f"the process tree of pid {root.pid}"


# ---------------------------------------------------------------------------------------- the end


def final_state(url: str, headers: dict) -> dict:
    """Healthy, and idle (every scheduler: 0 running, 0 waiting) within IDLE_TIMEOUT_S."""
    state = {"healthy": False, "idle": False, "loads": None}
    try:
        state["healthy"] = requests.get(f"{url}/health", timeout=30).status_code == 200
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            r = requests.get(f"{url}/v1/loads", headers=headers, timeout=30)
            r.raise_for_status()
            loads = r.json()["loads"]
            state["loads"] = [{k: load.get(k) for k in ("num_running_reqs", "num_waiting_reqs",
                                                        "num_used_tokens")} for load in loads]
            state["idle"] = all(l["num_running_reqs"] == 0 and l["num_waiting_reqs"] == 0
                                for l in state["loads"])
            if state["idle"] or time.monotonic() > deadline:
                return state
            time.sleep(1)
    except (requests.RequestException, ValueError, KeyError) as e:
        state["error"] = f"{type(e).__name__}: {e}"
        return state


def server_log(log_path: Path | None, offset: int, shown: int = 5) -> dict | None:
    """The server's log from `offset` on (the traffic's part): the HTTP statuses it answered, and
    the lines that report a failure (a traceback, an error, a 5xx)."""
    if log_path is None or not log_path.exists():
        return None
    with open(log_path, errors="replace") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    statuses = Counter(m.group(1) for l in lines if (m := re.search(r'HTTP/1\.[01]" (\d{3})', l)))
    failures = [l.strip() for l in lines
                if re.search(r'Traceback|\bERROR\b|Exception|HTTP/1\.[01]" 5\d\d', l)]
    return {"http_statuses": dict(statuses), "failure_lines": len(failures),
            "first_failures": [l[:300] for l in failures[:shown]]}


@dataclass
class Soak:
    """What one run measured."""

    outcomes: list[Outcome]
    traffic_s: float
    rss: dict
    samples: list[Sample]
    end: dict


def soak(url: str, api_key: str | None, root_pid: int | None, where: str,
         args: argparse.Namespace) -> Soak:
    """--clients clients for --minutes; RSS of the tree under root_pid (None: not measured)
    sampled before, every --rss-interval seconds, once the warm-up is over, and at the end."""
    traffic = Traffic(url, api_key)
    rss: dict = {"measured": root_pid is not None, "where": where}
    if root_pid is not None:
        rss["processes"] = describe_tree(root_pid)
        print(f"the server's {len(rss['processes'])} processes: "
              + ", ".join(f"{r['role']} ({r['pid']})" for r in rss["processes"]), flush=True)
    else:
        print(f"RSS not measured: {where}", flush=True)
    outcomes: list[Outcome] = []
    pools = prompt_pools(args.seed)
    print(f"{args.clients} clients for {args.minutes:g} min against {url} ...", flush=True)
    t0 = time.monotonic()
    samples = [take_sample(0.0, root_pid)]
    rss["start"] = samples[0].rss
    deadline, warmup_s = t0 + 60 * args.minutes, 60 * args.warmup_minutes
    clients = [threading.Thread(target=client_loop, daemon=True, name=f"soak-client-{i}",
                                args=(traffic, i, pools, args.seed, t0, deadline, outcomes))
               for i in range(args.clients)]
    for c in clients:
        c.start()
    next_sample, next_minute = args.sample_interval, 60.0
    while any(c.is_alive() for c in clients):
        now = time.monotonic() - t0
        warming = "after_warmup" not in rss
        if now >= next_sample or (warming and now >= warmup_s) or now >= next_minute:
            samples.append(take_sample(now, root_pid))
            next_sample = now + args.sample_interval
            if warming and now >= warmup_s:
                rss["after_warmup"] = samples[-1].rss
        if now >= next_minute:  # progress; the table at the end is the record
            row = latency_row([o for o in outcomes if next_minute - 60 <= o.end < next_minute])
            print(f"  minute {int(next_minute // 60)}: {row['served']} served, {row['errors']} errors, "
                  f"p50 {seconds(row['p50_s'])} s, p99 {seconds(row['p99_s'])} s, "
                  f"load {samples[-1].load1:.1f}"
                  + ("" if samples[-1].rss is None else f", RSS {samples[-1].rss / MIB:.1f} MiB"), flush=True)
            next_minute += 60
        time.sleep(0.2)
    traffic_s = time.monotonic() - t0
    samples.append(take_sample(traffic_s, root_pid))
    end = final_state(url, traffic.headers)
    samples.append(take_sample(time.monotonic() - t0, root_pid))  # idle, after the last request
    rss["end"] = samples[-1].rss
    if root_pid is not None:
        rss["processes_end"] = describe_tree(root_pid)
    rss["growth_after_warmup_pct"] = growth_pct(rss.get("after_warmup"), rss["end"])
    rss["growth_from_start_pct"] = growth_pct(rss["start"], rss["end"])
    return Soak(outcomes, traffic_s, rss, samples, end)


def report(run: Soak, args: argparse.Namespace, model: str | None, log_path: Path | None = None,
           log_offset: int = 0) -> int:
    """Prints the tables and the verdicts, writes the JSON record; the exit status."""
    outcomes, rss, end = run.outcomes, run.rss, run.end
    minutes = per_minute(outcomes, args.minutes)
    for row in minutes:  # the last sample taken within each minute; CPU use over the minute
        start, stop = 60 * (row["minute"] - 1), 60 * row["minute"]
        last = [x for x in run.samples if x.t <= stop + 1e-9][-1]
        row["rss_mib"] = None if last.rss is None else last.rss / MIB
        row["server_cpu_pct"] = cpu_percent(run.samples, start, stop, "server_cpu_s")
        row["soak_cpu_pct"] = cpu_percent(run.samples, start, stop, "soak_cpu_s")
        row["load1"] = last.load1
    kinds = per_kind(outcomes)
    total = latency_row(outcomes)
    errors = [o for o in outcomes if o.error]
    print_table(f"Soak: {args.clients} clients, {args.minutes:g} min of mixed traffic against "
                f"{args.base_url or 'launch_server.sh'} ({model or 'its model'}), per minute",
                ["minute", "served", "errors", "p50 s", "p99 s", "RSS MiB", "server CPU %", "clients CPU %",
                 "load"],
                [[r["minute"], r["served"], r["errors"], seconds(r["p50_s"]), seconds(r["p99_s"]),
                  number(r["rss_mib"]), number(r["server_cpu_pct"], 0), number(r["soak_cpu_pct"], 0),
                  number(r["load1"])] for r in minutes])
    print_table("Per kind of request", ["kind", "served", "errors", "p50 s", "p99 s"],
                [[r["kind"], r["served"], r["errors"], seconds(r["p50_s"]), seconds(r["p99_s"])]
                 for r in [*kinds, {"kind": "all", **total}]])
    share = cached_share(outcomes)
    print(f"\n{total['served']} requests served in {run.traffic_s / 60:.1f} min "
          f"({total['served'] / run.traffic_s:.2f}/s), {total['errors']} errors"
          + ("" if share is None else f"; {share:.0f} % of the prompt tokens of chat, JSON and regex "
             "requests came from the radix cache"))
    error_counts = Counter(f"{o.kind}: {o.error}" for o in errors)
    if errors:
        print("errors by kind: " + ", ".join(f"{k} x{n}" for k, n in error_counts.most_common()))
        for o in errors[:SHOWN_ERRORS]:
            print(f"  at {o.end:.1f} s, {o.kind}: {o.error}: {o.message}")
    growth = rss.get("growth_after_warmup_pct")
    rss_failed = growth is not None and growth >= RSS_GROWTH_LIMIT_PCT
    if rss["measured"]:
        print(f"RSS of the server's processes: {rss['start'] / MIB:.1f} MiB at the start, "
              f"{rss['after_warmup'] / MIB:.1f} MiB after {args.warmup_minutes:g} min of warm-up, "
              f"{rss['end'] / MIB:.1f} MiB at the end: {growth:+.1f} % after the warm-up"
              + (f"  <-- {RSS_GROWTH_LIMIT_PCT:g} % or more" if rss_failed else
                 f" (limit {RSS_GROWTH_LIMIT_PCT:g} %)"))
        start = {r["pid"]: r["rss_mib"] for r in rss["processes"]}
        print("  by process, start -> end: " + ", ".join(
            f"{r['role']} {start.get(r['pid'], 0):.0f} -> {r['rss_mib']:.0f} MiB"
            for r in rss["processes_end"]))
    else:
        print(f"RSS not measured: {rss['where']}")
    end_failed = not (end["healthy"] and end["idle"])
    print(f"at the end: {'healthy' if end['healthy'] else 'NOT healthy'}, "
          f"{'idle' if end['idle'] else 'NOT idle'} (/v1/loads: {end['loads']})"
          + (f"; {end['error']}" if "error" in end else ""))
    log = server_log(log_path, log_offset)
    if log is not None:
        print(f"server log ({log_path}), during the soak: HTTP statuses {log['http_statuses']}, "
              f"{log['failure_lines']} lines reporting failures"
              + "".join(f"\n  {l}" for l in log["first_failures"]))
    status = 1 if errors or rss_failed or end_failed else 0
    write_json("soak", {"model": model, "base_url": args.base_url, "minutes": args.minutes,
                        "warmup_minutes": args.warmup_minutes, "clients": args.clients, "seed": args.seed,
                        "mix": list(KINDS), "traffic_s": run.traffic_s, "total": total,
                        "per_minute": minutes, "per_kind": kinds, "radix_cached_prompt_share_pct": share,
                        "errors": {"count": len(errors), "by_kind": dict(error_counts),
                                   "first": [o.__dict__ for o in errors[:SHOWN_ERRORS]]},
                        "rss": rss, "samples": [x.__dict__ for x in run.samples],
                        "rss_growth_limit_pct": RSS_GROWTH_LIMIT_PCT, "end": end,
                        "server_log": log, "exit_status": status}, args.out)
    return status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint to serve (default: launch_server.sh's, the trained "
                   "tiny checkpoint)")
    p.add_argument("--base-url", help="a running server or router to measure (nothing is started)")
    p.add_argument("--minutes", type=float, default=10.0, help="of traffic (default 10)")
    p.add_argument("--warmup-minutes", type=float, default=1.0,
                   help="RSS growth is measured from this point of the traffic on (default 1)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-interval", type=float, default=10.0,
                   help="seconds between samples of the server's RSS and CPU time (default 10)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.base_url and args.model:
        p.error("--model starts a server; --base-url measures a running one: choose one")
    if args.minutes <= 0 or args.clients < 1:
        p.error("--minutes must be > 0 and --clients >= 1")
    if not 0 <= args.warmup_minutes < args.minutes:
        p.error(f"--warmup-minutes must lie in [0, --minutes) = [0, {args.minutes:g}), "
                f"got {args.warmup_minutes:g}")
    return args


def main() -> int:
    args = parse_args()
    if args.base_url:
        root_pid, where = local_server_root(args.base_url)
        api_key = os.environ.get(API_KEY_ENV) or None
        return report(soak(args.base_url.rstrip("/"), api_key, root_pid, where, args), args, None)
    api_key = f"sk-soak-{secrets.token_hex(12)}"  # this run's key (not the caller's MEGREZ_API_KEY)
    log_path = Path(tempfile.mkdtemp(prefix="megrez-soak-")) / "server.log"
    model = args.model or str(TRAINED_CHECKPOINT)
    print(f"starting launch_server.sh's server on {model} (log: {log_path})", flush=True)
    server = ServerProcess(args.model, api_key=api_key, log_path=log_path)
    log_offset = log_path.stat().st_size  # the start-up's part (e.g. 503 to /health) is not the soak's
    try:
        run = soak(server.url, api_key, server.process.pid,
                   "the process tree of launch_server.sh's supervisor", args)
    finally:
        server.stop()
    return report(run, args, model, log_path, log_offset)


if __name__ == "__main__":
    sys.exit(main())
