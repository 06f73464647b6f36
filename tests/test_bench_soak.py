"""bench.soak's arithmetic on made-up outcomes and samples (the soak itself is a benchmark, run by
hand: python -m bench.soak)."""

from __future__ import annotations

import pytest

from bench.soak import Outcome, Sample, cpu_percent, growth_pct, parse_args, per_kind, per_minute


def test_requests_count_in_the_minute_they_finished_in_and_late_ones_in_the_last():
    outcomes = [Outcome("chat", 0.0, 1.0), Outcome("chat", 50.0, 61.0), Outcome("json", 100.0, 130.0),
                Outcome("regex", 110.0, 112.0, error="HTTP 500", message="boom")]
    rows = per_minute(outcomes, minutes=2)
    counts = [(r["minute"], r["requests"], r["served"], r["errors"]) for r in rows]
    assert counts == [(1, 1, 1, 0), (2, 3, 2, 1)]
    assert rows[1]["p50_s"] == pytest.approx((11.0 + 30.0) / 2)  # the failed request's latency is left out
    assert per_minute([], minutes=0.5) == [{"minute": 1, "requests": 0, "served": 0, "errors": 0,
                                             "p50_s": None, "p99_s": None}]


def test_per_kind_rows_follow_the_mix_and_count_errors():
    rows = {r["kind"]: r for r in per_kind([Outcome("program", 0.0, 40.0),
                                            Outcome("program", 0.0, 2.0, error="check: program")])}
    assert (rows["program"]["served"], rows["program"]["errors"], rows["program"]["p99_s"]) == (1, 1, 40.0)
    assert rows["chat"]["requests"] == 0


def test_rss_growth_and_cpu_use_between_samples():
    assert growth_pct(1000, 1049) == pytest.approx(4.9)
    assert growth_pct(None, 1049) is None
    samples = [Sample(0.0, 100, 10.0, 1.0, 2.0), Sample(30.0, 100, 25.0, 1.3, 2.0),
               Sample(60.0, 100, 70.0, 1.6, 2.0)]
    assert cpu_percent(samples, 0, 60, "server_cpu_s") == pytest.approx(100.0)
    assert cpu_percent(samples, 30, 60, "soak_cpu_s") == pytest.approx(1.0)
    assert cpu_percent([Sample(0.0, None, None, 0.0, 0.0)] * 2, 0, 60, "server_cpu_s") is None


@pytest.mark.parametrize("argv", [["--minutes", "1", "--warmup-minutes", "1"],
                                  ["--model", "m", "--base-url", "http://127.0.0.1:30000"],
                                  ["--clients", "0"]])
def test_arguments_that_cannot_make_a_soak_are_refused(argv):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
