"""schemathesis, a schema-driven API fuzzer nobody here wrote, against launch_server.sh on the
trained tiny checkpoint (conftest.trained_server): requests generated from the server's own
/openapi.json for every generation, model-call, tokenizer and information endpoint a key holder
may call (docs/serving.md's table), with the API key, a fixed seed and a bounded number of cases per
operation (the repository's schemathesis.toml: fuzzing phase, not_a_server_error). No 5xx, and
the server serves a normal chat right after."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import requests

from .conftest import API_KEY, ROOT

SEED = 20261204
CASES_PER_OPERATION = 8
# its console script, run by this interpreter (the thin venv's PATH may not reach the script)
SCHEMATHESIS = [sys.executable, "-c",
                "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"]


def key_holder_paths() -> list[str]:
    """docs/serving.md's row of endpoints the API key opens."""
    for line in (ROOT / "docs" / "serving.md").read_text().splitlines():
        if line.startswith("| the API key"):
            return re.findall(r"`(/[^`]*)`", line)
    raise AssertionError("docs/serving.md has no row for the API key's endpoints")


def path_regex(paths: list[str]) -> str:
    """One anchored regex for OpenAPI paths ({param} and {param:path} match a segment)."""
    return "|".join("^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(p)) + "$" for p in paths)


def test_path_regex_matches_the_paths_and_nothing_else():
    regex = re.compile(path_regex(["/v1/models/{model:path}", "/generate"]))
    assert regex.search("/v1/models/{model}") and regex.search("/generate")
    assert not regex.search("/generate_stream") and not regex.search("/v1/models/a/b")


def server_errors_logged(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r'HTTP/1\.1" 5\d\d', line)]


def test_schemathesis_finds_no_server_error(trained_server, tmp_path):
    paths = key_holder_paths()
    assert {"/v1/chat/completions", "/v1/completions", "/generate", "/tokenize", "/v1/models"} <= set(paths)
    log_before = len(trained_server.log_path.read_text(errors="replace"))
    started = time.monotonic()
    r = subprocess.run(
        [*SCHEMATHESIS, "--config-file", str(ROOT / "schemathesis.toml"), "--no-color", "run",
         f"{trained_server.url}/openapi.json", "--include-path-regex", path_regex(paths),
         "--max-examples", str(CASES_PER_OPERATION), "--seed", str(SEED),
         "--report", "json", "--report-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "MEGREZ_API_KEY": API_KEY})
    (report_file,) = tmp_path.glob("json-*.json")
    report = json.loads(report_file.read_text())
    cases = report["test_cases"]["generated"]
    print(f"schemathesis: {cases} cases over {report['operations']['tested']} operations in "
          f"{time.monotonic() - started:.0f} s, {len(report['failures'])} failures")
    assert r.returncode == 0 and report["failures"] == [] and report["errors"] == [], r.stdout[-4000:]
    assert report["operations"]["tested"] == report["operations"]["selected"] >= len(paths)
    assert cases >= 2 * report["operations"]["tested"]
    # what the server itself logged while the fuzzer ran: no 5xx either
    assert server_errors_logged(trained_server.log_path.read_text(errors="replace")[log_before:]) == []
    assert requests.get(f"{trained_server.url}/health", timeout=30).status_code == 200
    reply = requests.post(f"{trained_server.url}/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"model": "megrez-moe", "max_tokens": 16, "temperature": 0,
                                "messages": [{"role": "user", "content": "世界上最高的山峰是哪座？"}]})
    assert reply.status_code == 200 and "珠穆朗玛峰" in reply.json()["choices"][0]["message"]["content"]
