"""8. SIGTERM under load drains with a deadline and exits 0; the port is reusable at once; a killed
scheduler stops everything; without an admin key control endpoints answer 403 (servers of
their own)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import psutil
import pytest
import requests

from megrez_sglang.serving.server import ServerProcess, is_alive, process_title

from ..conftest import API_KEY, ROOT
from .replies import (
    bearer,
    generates,
)
from .routes import sglang_routes

# ------------------------------------------------------------------------- servers of their own


def live(processes: list[psutil.Process]) -> list[str]:
    return [f"{p.pid} {process_title(p)[:40]}" for p in processes if is_alive(p)]


DRAIN_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def sigterm_during_streams(tiny_checkpoint, tmp_path_factory):
    """A server (API key only, --shutdown-timeout 10) SIGTERMed while 32 streams of 256 tokens are
    in flight, right after a few requests with "Connection: close" (as health probes send them):
    the server closes those connections first, which leaves them in TIME_WAIT on its port."""
    log = tmp_path_factory.mktemp("sigterm") / "server.log"
    server = ServerProcess(tiny_checkpoint, command=[str(ROOT / "launch_server.sh")], api_key=API_KEY,
                           log_path=log, args=["--shutdown-timeout", str(DRAIN_TIMEOUT_S)])
    supervisor = psutil.Process(server.process.pid)
    started = [supervisor, *supervisor.children(recursive=True)]
    streaming = threading.Semaphore(0)

    def stream(i: int) -> str:
        """How the stream ended: "length"/"stop"/"abort" (its finish_reason, then [DONE]), or "cut"."""
        first = True
        try:
            # 32 x 256 tokens fit the CPU KV cache at once: every request runs, none waits in the queue
            with requests.post(f"{server.url}/generate", headers=bearer(API_KEY), stream=True, timeout=600,
                               json={"text": f"第{i}个故事：", "stream": True,
                                     "sampling_params": {"max_new_tokens": 256, "ignore_eos": True}}) as r:
                finish = None
                for line in r.iter_lines():
                    if not line.startswith(b"data: "):
                        continue
                    if first:
                        streaming.release()
                        first = False
                    if line == b"data: [DONE]":
                        return finish["type"] if finish else "[DONE] without a finish_reason"
                    finish = json.loads(line.removeprefix(b"data: "))["meta_info"]["finish_reason"] or finish
                return "cut"
        except requests.RequestException:
            return "cut"
        finally:
            if first:
                streaming.release()

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(stream, i) for i in range(32)]
        all_streaming = all(streaming.acquire(timeout=600) for _ in range(32))
        for _ in range(3):
            assert requests.get(f"{server.url}/health", headers={"Connection": "close"}, timeout=30).ok
        in_flight = sum(not f.done() for f in futures)
        stopping = time.monotonic()
        status = server.stop(timeout_s=300)
        stop_s = time.monotonic() - stopping
        outcomes = [f.result(timeout=60) for f in futures]
    time.sleep(1)
    yield SimpleNamespace(port=server.port, status=status, in_flight=in_flight if all_streaming else 0,
                          outcomes=outcomes, stop_s=stop_s, left=live(started), log=log)


@pytest.mark.slow
def test_sigterm_while_32_streams_are_in_flight_ends_every_stream_and_exits_0(sigterm_during_streams):
    outcome = sigterm_during_streams
    assert outcome.in_flight == 32  # every stream had started and none had ended when SIGTERM came
    # each stream finished, or was aborted at the drain deadline: a finish_reason, then [DONE]
    assert set(outcome.outcomes) <= {"length", "abort"}, outcome.outcomes
    assert outcome.status == 0, outcome.log.read_text()[-2000:]
    # the drain deadline, SGLang's 5 s polling of it, and stopping its workers
    assert outcome.stop_s < DRAIN_TIMEOUT_S + 30, outcome.stop_s


@pytest.mark.slow
def test_sigterm_leaves_no_process_behind(sigterm_during_streams):
    assert sigterm_during_streams.left == []


def binds_without_reuseaddr(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def restarted(sigterm_during_streams, tiny_checkpoint, tmp_path_factory):
    """The stopped server's port, started again at once (API key only, no admin key)."""
    port = sigterm_during_streams.port
    time_wait = [c for c in psutil.net_connections("tcp")
                 if c.laddr and c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT]
    plain_bind_refused = not binds_without_reuseaddr(port)
    log = tmp_path_factory.mktemp("restarted") / "server.log"
    server = ServerProcess(tiny_checkpoint, port=port, command=[str(ROOT / "launch_server.sh")],
                           api_key=API_KEY, log_path=log)
    yield SimpleNamespace(server=server, time_wait=len(time_wait), plain_bind_refused=plain_bind_refused)
    server.stop()


@pytest.mark.slow
def test_a_stopped_server_restarts_on_its_port_at_once(restarted):
    # the situation that made the old pre-check (a bind without SO_REUSEADDR) refuse the port
    assert restarted.time_wait > 0 and restarted.plain_bind_refused
    assert generates(restarted.server.url)


@pytest.mark.slow
def test_without_an_admin_key_control_endpoints_answer_403_to_everyone(restarted):
    url = restarted.server.url
    for route in (r for r in sglang_routes() if r.control):
        for method in route.methods - {"HEAD"}:
            for key in (API_KEY, None):
                r = requests.request(method, f"{url}{route.url_path}", headers=bearer(key), timeout=30)
                assert r.status_code == 403, (method, route.path, key, r.status_code)
    assert generates(url)


@pytest.mark.slow
def test_killing_the_scheduler_stops_everything_with_a_one_line_reason(restarted):
    server = restarted.server
    supervisor = psutil.Process(server.process.pid)
    started = [supervisor, *supervisor.children(recursive=True)]
    scheduler = next(p for p in started if process_title(p).startswith("sglang::scheduler"))
    killed_at = time.monotonic()
    scheduler.send_signal(signal.SIGKILL)
    status = server.process.wait(timeout=60)
    elapsed = time.monotonic() - killed_at
    assert status == 1 and elapsed < 10, (status, elapsed)
    errors = [line for line in server.log_path.read_text().splitlines() if line.startswith("launch_server:")]
    assert errors == [f"launch_server: error: SGLang's scheduler process (pid {scheduler.pid}) died; "
                      "every process of the server is stopped"]
    assert live(started) == []
