"""Soak: minutes of mixed traffic from 16 clients against launch_server.sh; requests served,
errors (must be 0), latency per minute, and the server processes' memory at the start and the end.

    python -m bench.soak [--model PATH [--server-args FLAGS] | --base-url URL] [--minutes 10]
                         [--warmup-minutes 1] [--clients 16] [--seed 0] [--out PATH]

The clients are Locust users (headless, one process): Locust runs them, times every request,
computes the percentiles, and writes its CSV files and HTML report (named at the end). The request
mix is this project's own and lives in bench/soak_mix.py, the locustfile: chat, streamed chat, a
/generate stream dropped after half of its tokens, a chat under a JSON schema, a regex-constrained
/generate, a frontend-language program forking 3 branches (the docstring there says how each is
checked). A request the server sheds (429: launch_server.sh's work bound, docs/serving.md
"Overload") is sent again after its Retry-After, as the openai client does by itself
(bench/retry_after.py); only that: any other non-2xx answer or lost connection is an error. Its
time includes the waits; the server log's count of 429s says how often that happened. What this
module keeps is what Locust does not do: starting the server, sampling the server's memory and
CPU, the per-minute table and the verdicts.

Per minute (from Locust's stats history, written every second; each row's percentiles cover the
minute before it) it prints requests served, failures, p50 and p99 latency, and, to read them on a
shared machine, the server's RSS and CPU use (% of one core), Locust's (the clients') and the load
average. Requests still in flight at the end finish (Locust's --stop-timeout) and count in the
last minute.

Without --base-url it serves --model (default: what launch_server.sh serves without a path, the
trained tiny checkpoint) for the duration, with a fresh API key handed to the server and to Locust
through their environments; the server's log goes to a temporary file, named at the start.
--base-url measures a running server or router (MEGREZ_API_KEY, when set, is its key). Memory: the
summed RSS of the server's process tree (supervisor, `sglang serve`, scheduler, detokenizer) before
the traffic, after --warmup-minutes of it, and at the end; with --base-url only when the server
runs on this machine (found from the process listening on its port). At the end the server must be
healthy and idle (/v1/loads). Exit status 1 when a request failed, the server was not healthy and
idle at the end, or its RSS grew by RSS_GROWTH_LIMIT_PCT or more after the warm-up. A benchmark,
not a test: figures in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from megrez_sglang.model.model_path import TRAINED_CHECKPOINT
from megrez_sglang.serving.hardening import API_KEY_ENV
from megrez_sglang.serving.server import ServerProcess

from .report import print_table, write_json

LOCUSTFILE = Path(__file__).with_name("soak_mix.py")
KINDS = ("chat", "stream", "dropped_stream", "json", "regex", "program")  # soak_mix.KINDS, in its order
RSS_GROWTH_LIMIT_PCT = 5.0
REQUEST_TIMEOUT_S = 300  # also how long Locust lets the requests in flight at the end finish
IDLE_TIMEOUT_S = 60  # the end: how long the server may take to show 0 running, 0 waiting
START_TIMEOUT_S = 120  # Locust's start (it imports this package) until its first user runs
SHOWN_ERRORS = 10
MIB = 1 << 20


# ---------------------------------------------------------------------------------- Locust's figures


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def milliseconds_to_s(value: str | None) -> float | None:
    """A Locust percentile cell (ms; "N/A" or 0 where the window held no request) in seconds."""
    try:
        ms = float(value)
    except (TypeError, ValueError):
        return None
    return ms / 1000 if ms > 0 else None


def traffic_start(history: list[dict]) -> int | None:
    """The second (Unix time) of the first history row with users running."""
    running = [r for r in history if r["Name"] == "Aggregated" and int(r["User Count"]) > 0]
    return int(running[0]["Timestamp"]) if running else None


def per_minute(history: list[dict], minutes: float, final: dict | None = None) -> list[dict]:
    """A row per minute of traffic from Locust's aggregated history rows: requests served and
    failed in the minute (differences of its running totals), p50 and p99 over the minute (the
    row's sliding-window percentiles). The last minute takes the last row, and the totals of
    Locust's final table (`final`, its aggregated row) where given, so that requests finishing
    after the end count in it."""
    rows = [r for r in history if r["Name"] == "Aggregated"]
    t0 = traffic_start(rows)
    n = max(1, math.ceil(minutes))
    out, before = [], (0, 0)
    for m in range(1, n + 1):
        upto = rows if m == n or t0 is None else [r for r in rows if int(r["Timestamp"]) <= t0 + 60 * m]
        if not upto:
            out.append({"minute": m, "requests": 0, "served": 0, "errors": 0, "p50_s": None, "p99_s": None})
            continue
        row = upto[-1]
        requests_total, failures = int(row["Total Request Count"]), int(row["Total Failure Count"])
        if m == n and final is not None:
            requests_total, failures = int(final["Request Count"]), int(final["Failure Count"])
        requests_in_minute, errors = requests_total - before[0], failures - before[1]
        before = (requests_total, failures)
        p50, p99 = milliseconds_to_s(row["50%"]), milliseconds_to_s(row["99%"])
        if n == 1 and final is not None and p50 is None:
            # a run of under a minute: Locust's one-minute window reaches back before it started
            # (no percentile); the minute's are the whole run's, from its final table
            p50, p99 = milliseconds_to_s(final["50%"]), milliseconds_to_s(final["99%"])
        out.append({"minute": m, "requests": requests_in_minute, "served": requests_in_minute - errors,
                    "errors": errors, "p50_s": p50, "p99_s": p99})
    return out


def per_kind(stats: list[dict]) -> list[dict]:
    """Locust's final table, a row per kind of the mix (in its order) and one for all."""
    by_name = {r["Name"]: r for r in stats}
    rows = []
    for kind in (*KINDS, "Aggregated"):
        r = by_name.get(kind)
        total, failures = (int(r["Request Count"]), int(r["Failure Count"])) if r else (0, 0)
        rows.append({"kind": "all" if kind == "Aggregated" else kind, "requests": total,
                     "served": total - failures, "errors": failures,
                     "p50_s": milliseconds_to_s(r["50%"]) if r else None,
                     "p99_s": milliseconds_to_s(r["99%"]) if r else None})
    return rows


def growth_pct(before: int | None, after: int | None) -> float | None:
    return None if not before or after is None else 100.0 * (after - before) / before


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
    measured), Locust's CPU time (the clients'), the 1-minute load average."""

    t: float  # seconds since the traffic started
    rss: int | None
    server_cpu_s: float | None
    soak_cpu_s: float
    load1: float


def take_sample(t: float, root_pid: int | None, clients_pid: int, clients_cpu_s: float = 0.0) -> Sample:
    """clients_cpu_s: Locust's CPU time last seen, kept once Locust has exited."""
    rss, cpu = tree_usage(root_pid) if root_pid is not None else (None, None)
    try:
        clients_cpu_s = tree_usage(clients_pid)[1]
    except psutil.NoSuchProcess:
        pass
    return Sample(t, rss, cpu, clients_cpu_s, os.getloadavg()[0])


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
    for mark, name in (("megrez_sglang.serving.server", "supervisor"), ("sglang.cli.main", "sglang serve"),
                       ("megrez_sglang.serving.cluster", "cluster"),
                       ("megrez_sglang.serving.gateway", "router"),
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
    """What one run measured: Locust's files and exit status, the samples, the end state."""

    csv_prefix: Path
    html: Path
    locust_status: int
    traffic_s: float
    rss: dict
    samples: list[Sample]
    end: dict

    def history(self) -> list[dict]:
        return read_csv(Path(f"{self.csv_prefix}_stats_history.csv"))

    def stats(self) -> list[dict]:
        return read_csv(self.csv_prefix.with_name("final_stats.csv"))

    def failures(self) -> list[dict]:
        return read_csv(self.csv_prefix.with_name("final_failures.csv"))


def locust_command(url: str, args: argparse.Namespace, csv_prefix: Path, html: Path) -> list[str]:
    return [sys.executable, "-m", "locust", "--locustfile", str(LOCUSTFILE), "--headless", "--only-summary",
            "--host", url, "--users", str(args.clients), "--spawn-rate", str(args.clients),
            "--run-time", f"{round(60 * args.minutes)}s", "--stop-timeout", str(REQUEST_TIMEOUT_S),
            "--csv", str(csv_prefix), "--csv-full-history", "--html", str(html),
            "--loglevel", "WARNING", "--soak-seed", str(args.seed),
            "--soak-final-csv", str(csv_prefix.with_name("final"))]


def soak(url: str, api_key: str | None, root_pid: int | None, where: str,
         args: argparse.Namespace) -> Soak:
    """Locust's --clients users for --minutes; RSS of the tree under root_pid (None: not
    measured) sampled before, every --sample-interval seconds, once the warm-up is over, and at
    the end."""
    rss: dict = {"measured": root_pid is not None, "where": where}
    if root_pid is not None:
        rss["processes"] = describe_tree(root_pid)
        print(f"the server's {len(rss['processes'])} processes: "
              + ", ".join(f"{r['role']} ({r['pid']})" for r in rss["processes"]), flush=True)
    else:
        print(f"RSS not measured: {where}", flush=True)
    files = Path(tempfile.mkdtemp(prefix="megrez-soak-locust-"))
    csv_prefix, html = files / "soak", files / "soak.html"
    environment = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if api_key:
        environment[API_KEY_ENV] = api_key  # Locust's users read it there, never from argv
    start_rss = tree_usage(root_pid)[0] if root_pid is not None else None
    print(f"{args.clients} Locust users for {args.minutes:g} min against {url} (Locust's files: {files}) ...",
          flush=True)
    # cwd: the checkout, whose bench package the locustfile imports (bench.retry_after)
    locust = subprocess.Popen(locust_command(url, args, csv_prefix, html), env=environment,
                              stdin=subprocess.DEVNULL, cwd=LOCUSTFILE.parent.parent)
    history_path = Path(f"{csv_prefix}_stats_history.csv")
    deadline = time.time() + START_TIMEOUT_S
    t0 = None
    while t0 is None and locust.poll() is None and time.time() < deadline:
        t0 = traffic_start(read_csv(history_path)) if history_path.exists() else None
        time.sleep(0.5)
    if t0 is None:
        locust.kill()
        raise SystemExit(f"bench.soak: error: Locust did not start its users within {START_TIMEOUT_S} s "
                         f"(exit status {locust.wait()})")
    samples = [take_sample(0.0, root_pid, locust.pid)]
    samples[0].rss = rss["start"] = start_rss  # taken before Locust started

    warmup_s, next_sample, next_minute = 60 * args.warmup_minutes, args.sample_interval, 60.0
    while locust.poll() is None:
        now = time.time() - t0
        warming = "after_warmup" not in rss
        if now >= next_sample or (warming and now >= warmup_s) or now >= next_minute:
            samples.append(take_sample(now, root_pid, locust.pid, samples[-1].soak_cpu_s))
            next_sample = now + args.sample_interval
            if warming and now >= warmup_s:
                rss["after_warmup"] = samples[-1].rss
        if now >= next_minute:  # progress from Locust's history (flushed every 10 s)
            row = per_minute(read_csv(history_path), next_minute / 60)[-1]
            print(f"  minute {int(next_minute // 60)}: {row['served']} served, {row['errors']} failed, "
                  f"p50 {seconds(row['p50_s'])} s, p99 {seconds(row['p99_s'])} s, "
                  f"load {samples[-1].load1:.1f}"
                  + ("" if samples[-1].rss is None else f", RSS {samples[-1].rss / MIB:.1f} MiB"), flush=True)
            next_minute += 60
        time.sleep(0.2)
    traffic_s = time.time() - t0
    locust_status = locust.wait()
    end = final_state(url, {"Authorization": f"Bearer {api_key}"} if api_key else {})
    samples.append(take_sample(time.time() - t0, root_pid, locust.pid, samples[-1].soak_cpu_s))  # idle
    rss["end"] = samples[-1].rss
    if root_pid is not None:
        rss["processes_end"] = describe_tree(root_pid)
    rss["growth_after_warmup_pct"] = growth_pct(rss.get("after_warmup"), rss["end"])
    rss["growth_from_start_pct"] = growth_pct(rss["start"], rss["end"])
    return Soak(csv_prefix, html, locust_status, traffic_s, rss, samples, end)


def report(run: Soak, args: argparse.Namespace, model: str | None, log_path: Path | None = None,
           log_offset: int = 0) -> int:
    """Prints the tables and the verdicts, writes the JSON record; the exit status."""
    rss, end = run.rss, run.end
    stats = run.stats()
    final = next((r for r in stats if r["Name"] == "Aggregated"), None)
    minutes = per_minute(run.history(), args.minutes, final)
    for row in minutes:  # the last sample taken within each minute; CPU use over the minute
        start, stop = 60 * (row["minute"] - 1), 60 * row["minute"]
        last = [x for x in run.samples if x.t <= stop + 1e-9][-1]
        row["rss_mib"] = None if last.rss is None else last.rss / MIB
        row["server_cpu_pct"] = cpu_percent(run.samples, start, stop, "server_cpu_s")
        row["soak_cpu_pct"] = cpu_percent(run.samples, start, stop, "soak_cpu_s")
        row["load1"] = last.load1
    kinds = per_kind(stats)
    total = kinds[-1]
    failures = run.failures()
    print_table(f"Soak: {args.clients} Locust users, {args.minutes:g} min of mixed traffic against "
                f"{args.base_url or 'launch_server.sh'} ({model or 'its model'}), per minute",
                ["minute", "served", "errors", "p50 s", "p99 s", "RSS MiB", "server CPU %", "clients CPU %",
                 "load"],
                [[r["minute"], r["served"], r["errors"], seconds(r["p50_s"]), seconds(r["p99_s"]),
                  number(r["rss_mib"]), number(r["server_cpu_pct"], 0), number(r["soak_cpu_pct"], 0),
                  number(r["load1"])] for r in minutes])
    print_table("Per kind of request (Locust's table)", ["kind", "served", "errors", "p50 s", "p99 s"],
                [[r["kind"], r["served"], r["errors"], seconds(r["p50_s"]), seconds(r["p99_s"])]
                 for r in kinds])
    print(f"\n{total['served']} requests served in {run.traffic_s / 60:.1f} min "
          f"({total['served'] / run.traffic_s:.2f}/s), {total['errors']} errors; "
          f"Locust's report: {run.html}")
    for f in failures[:SHOWN_ERRORS]:
        print(f"  {f['Name']} x{f['Occurrences']}: {' '.join(f['Error'].split())[:300]}")
    growth = rss.get("growth_after_warmup_pct")
    rss_failed = growth is not None and growth >= RSS_GROWTH_LIMIT_PCT
    if rss["measured"] and rss.get("after_warmup") is not None:
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
        shed = log["http_statuses"].get("429", 0)
        print(f"server log ({log_path}), during the soak: HTTP statuses {log['http_statuses']} "
              f"({shed} requests shed with 429 and sent again after their Retry-After), "
              f"{log['failure_lines']} lines reporting failures"
              + "".join(f"\n  {l}" for l in log["first_failures"]))
    locust_failed = run.locust_status not in (0, 1) or (run.locust_status == 1 and not total["errors"])
    if locust_failed:
        print(f"Locust exited with status {run.locust_status} (see its output above)")
    status = 1 if total["errors"] or not total["served"] or rss_failed or end_failed or locust_failed else 0
    write_json("soak", {"model": model, "base_url": args.base_url, "minutes": args.minutes,
                        "warmup_minutes": args.warmup_minutes, "clients": args.clients, "seed": args.seed,
                        "load_tool": "locust", "mix": list(KINDS), "traffic_s": run.traffic_s,
                        "total": total, "per_minute": minutes, "per_kind": kinds,
                        "failures": failures[:SHOWN_ERRORS], "locust_files": str(run.csv_prefix.parent),
                        "locust_exit_status": run.locust_status, "rss": rss,
                        "samples": [x.__dict__ for x in run.samples],
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
    p.add_argument("--server-args", default="", metavar="FLAGS",
                   help="launch_server.sh flags for the server it starts, e.g. "
                   "'--max-pending-tokens 1000000' (the work bound out of the way)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-interval", type=float, default=10.0,
                   help="seconds between samples of the server's RSS and CPU time (default 10)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.base_url and (args.model or args.server_args):
        p.error("--model and --server-args start a server; --base-url measures a running one: choose")
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
    server = ServerProcess(args.model, api_key=api_key, log_path=log_path, args=shlex.split(args.server_args))
    log_offset = log_path.stat().st_size  # the start-up's part (e.g. 503 to /health) is not the soak's
    try:
        run = soak(server.url, api_key, server.process.pid,
                   "the process tree of launch_server.sh's supervisor", args)
    finally:
        server.stop()
    return report(run, args, model, log_path, log_offset)


if __name__ == "__main__":
    sys.exit(main())
