"""bench.soak: its reading of Locust's files (quick, on rows in Locust's CSV formats), and one short
real run of Locust's users against the shared server of the trained checkpoint (slow). The soak
itself is a benchmark, run by hand: python -m bench.soak."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from bench.soak import (
    KINDS,
    Sample,
    cpu_percent,
    growth_pct,
    locust_command,
    parse_args,
    per_kind,
    per_minute,
    traffic_start,
)
from tests.conftest import API_KEY, ROOT


def history_row(t: int, users: int, requests: int, failures: int, p50: str = "0", p99: str = "0",
                name: str = "Aggregated") -> dict:
    """A row of Locust's *_stats_history.csv (the columns this module reads)."""
    return {"Timestamp": str(t), "User Count": str(users), "Name": name, "50%": p50, "99%": p99,
            "Total Request Count": str(requests), "Total Failure Count": str(failures)}


def test_kinds_are_the_locustfiles_mix_in_its_order():
    """(soak_mix is not imported here: Locust monkey-patches the process that imports it.)"""
    tree = ast.parse((ROOT / "bench" / "soak_mix.py").read_text())
    assigned = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert ast.literal_eval(assigned["KINDS"]) == KINDS


def test_the_traffic_starts_at_the_first_row_with_users():
    rows = [history_row(100, 0, 0, 0), history_row(101, 4, 0, 0), history_row(101, 4, 0, 0, name="chat"),
            history_row(102, 16, 3, 0)]
    assert traffic_start(rows) == 101
    assert traffic_start([history_row(100, 0, 0, 0)]) is None


def test_minutes_are_differences_of_locusts_running_totals_and_late_requests_count_in_the_last():
    rows = [history_row(1000, 16, 0, 0, "N/A", "N/A"), history_row(1030, 16, 40, 0, "450", "7000"),
            history_row(1060, 16, 90, 1, "500", "7700"), history_row(1090, 16, 150, 1, "520", "8100"),
            history_row(1130, 0, 185, 2, "540", "9000"),  # after the end: the drain
            history_row(1060, 16, 999, 9, name="chat")]  # per-kind rows are not the totals
    minutes = per_minute(rows, minutes=2)
    assert [(r["minute"], r["requests"], r["served"], r["errors"]) for r in minutes] == [
        (1, 90, 89, 1), (2, 95, 94, 1)]
    assert (minutes[0]["p50_s"], minutes[0]["p99_s"]) == (0.5, 7.7)
    assert (minutes[1]["p50_s"], minutes[1]["p99_s"]) == (0.54, 9.0)
    final = {"Name": "Aggregated", "Request Count": "187", "Failure Count": "2", "50%": "510", "99%": "9100"}
    assert [r["served"] for r in per_minute(rows, minutes=2, final=final)] == [89, 96]
    short = [history_row(1000, 6, 0, 0, "0", "0"), history_row(1009, 6, 5, 0, "0", "0")]  # no window yet
    rows_of_short = per_minute(short, 0.15, final)
    assert [(r["served"], r["p50_s"], r["p99_s"]) for r in rows_of_short] == [(185, 0.51, 9.1)]
    assert per_minute([], minutes=0.5) == [{"minute": 1, "requests": 0, "served": 0, "errors": 0,
                                             "p50_s": None, "p99_s": None}]


def test_per_kind_rows_follow_the_mix_and_count_failures():
    row = {"Request Count": "5", "Failure Count": "1", "50%": "2900", "99%": "14000"}
    stats = [{"Name": "program", **row}, {"Name": "Aggregated", **row}]
    rows = {r["kind"]: r for r in per_kind(stats)}
    assert list(rows) == [*KINDS, "all"]
    assert (rows["program"]["served"], rows["program"]["errors"], rows["program"]["p99_s"]) == (4, 1, 14.0)
    assert (rows["chat"]["requests"], rows["chat"]["p50_s"]) == (0, None)


def test_rss_growth_and_cpu_use_between_samples():
    assert growth_pct(1000, 1049) == pytest.approx(4.9)
    assert growth_pct(None, 1049) is None
    samples = [Sample(0.0, 100, 10.0, 1.0, 2.0), Sample(30.0, 100, 25.0, 1.3, 2.0),
               Sample(60.0, 100, 70.0, 1.6, 2.0)]
    assert cpu_percent(samples, 0, 60, "server_cpu_s") == pytest.approx(100.0)
    assert cpu_percent(samples, 30, 60, "soak_cpu_s") == pytest.approx(1.0)
    assert cpu_percent([Sample(0.0, None, None, 0.0, 0.0)] * 2, 0, 60, "server_cpu_s") is None


def test_locust_gets_the_run_but_never_the_key(tmp_path):
    args = parse_args(["--minutes", "2", "--clients", "3", "--seed", "7"])
    command = locust_command("http://127.0.0.1:30000", args, tmp_path / "soak", tmp_path / "soak.html")
    joined = " ".join(command)
    for part in ("--headless", "--users 3", "--spawn-rate 3", "--run-time 120s", "--csv-full-history",
                 "--soak-seed 7", "--host http://127.0.0.1:30000"):
        assert part in joined
    assert "sk-" not in joined and "key" not in joined.lower()


@pytest.mark.parametrize("argv", [["--minutes", "1", "--warmup-minutes", "1"],
                                  ["--model", "m", "--base-url", "http://127.0.0.1:30000"],
                                  ["--server-args", "--max-pending-tokens 9", "--base-url", "http://127.0.0.1:1"],
                                  ["--clients", "0"]])
def test_arguments_that_cannot_make_a_soak_are_refused(argv):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2


def test_a_short_soak_serves_every_kind_of_the_mix_without_a_failure(trained_server, tmp_path):
    """Locust's users, the mix and this module's reading of Locust's files, for real: 6 users, one
    starting at each kind of the mix, for 9 s against the shared server (its process tree is on
    this machine, so RSS is measured); every first request finishes (Locust's --stop-timeout)."""
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "bench.soak", "--base-url", trained_server.url,
                          "--minutes", "0.15", "--warmup-minutes", "0.05", "--clients", str(len(KINDS)),
                          "--sample-interval", "2", "--out", str(out)],
                         cwd=ROOT, env={**os.environ, "MEGREZ_API_KEY": API_KEY},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads(out.read_text())
    kinds = {r["kind"]: r for r in record["per_kind"]}
    assert all(kinds[k]["served"] >= 1 for k in KINDS), kinds
    total = record["total"]
    assert total["errors"] == 0 and total["served"] == sum(kinds[k]["served"] for k in KINDS)
    assert record["per_minute"][0]["served"] == total["served"]
    assert record["per_minute"][0]["p50_s"] is not None and total["p99_s"] >= total["p50_s"]
    assert record["rss"]["measured"] and record["rss"]["end"] > 0
    assert record["end"]["healthy"] and record["end"]["idle"]
    assert API_KEY not in run.stdout + run.stderr
