"""Shared fixtures: checkpoints built once per session, engines started once per session, one
HTTP server shared by the server, programs and eval tests.

Lanes: every test that starts SGLang (through the `engines`, `server` or `trained_server`
fixtures, or marked ``slow`` by hand: its own server, a subprocess engine, a long run) is marked
``slow``; ``pytest -m "not slow"`` is the quick lane. Order: quick tests, then engine tests (one
engine alive at a time), then the shared server's tests, then the trained checkpoint's server's
(third-party clients: lm-evaluation-harness, schemathesis; the eval against the reference), then
tests that start servers of their own. Each shared server stops when its lane is over.

Importing megrez_sglang first configures SGLang's CPU engine on hosts without CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import megrez_sglang  # noqa: F401  (configures SGLang for this host before it is imported)
from megrez_sglang.model.build_checkpoint import build_checkpoint
from megrez_sglang.model.model_path import TRAINED_CHECKPOINT
from megrez_sglang.serving.server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-123456"  # the card's example key
ADMIN_KEY = "sk-admin-5f0c2e9b7d41"  # MEGREZ_ADMIN_API_KEY of the shared server: control endpoints
ENGINE_FIXTURES = {"engines", "tiny_engine"}
TRAINED_SERVER_FIXTURES = {"trained_server", "trained_free_greedy_eval"}

# The reference models in this process are tiny: a second OpenMP thread buys nothing, and on a
# busy machine its spin-waits made a 10-token generate 15x slower (3.6 s instead of 0.25 s).
torch.set_num_threads(1)
SERVER_FIXTURES = {"server", "client", "backend"}


def lane(item) -> int:
    fixtures = set(item.fixturenames)
    if ENGINE_FIXTURES & fixtures and not (SERVER_FIXTURES | TRAINED_SERVER_FIXTURES) & fixtures:
        return 1
    if SERVER_FIXTURES & fixtures:
        return 2
    if TRAINED_SERVER_FIXTURES & fixtures:
        return 3
    return 4 if item.get_closest_marker("slow") else 0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if lane(item):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lane)  # stable: file order within a lane


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    """The full benchmark mirror (laid out as described in eval/README.md): MEGREZ_EVAL_DATA, else
    ../shared/data beside the clone (what CI has). Tests that need whole test sets skip without it;
    everything else uses the small fixture files in tests/data."""
    candidates = [os.environ.get("MEGREZ_EVAL_DATA"), ROOT.parent / "shared" / "data"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "gsm8k" / "test.jsonl").is_file():
            return Path(candidate)
    pytest.skip("no full benchmark mirror (set MEGREZ_EVAL_DATA to a folder laid out like "
                "eval/README.md describes); the fixture-based tests cover the same code")


@pytest.fixture(scope="module")
def sglang_world():
    """A torch.distributed world of one (gloo) and SGLang's model-parallel groups in this process,
    for tests that build SGLang layers directly; torn down after the module. Left behind, the
    groups (tp 1) make a later Engine with tp_size=2 refuse to start ("parallel topology is
    inconsistent"), and the MASTER_PORT/RANK/WORLD_SIZE variables it sets would reach every
    engine and server this process starts. The port is a free one: two test runs on one machine
    must not collide."""
    from sglang.srt.distributed import parallel_state
    from sglang.test.layer_ut_utils import init_single_process_dist

    environ = dict(os.environ)
    init_single_process_dist(master_port=free_port())
    yield
    parallel_state.destroy_model_parallel()
    parallel_state.destroy_distributed_environment()
    for name in set(os.environ) - set(environ):
        del os.environ[name]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """build(name, preset="tiny", seed=0, bigram_prior=..., **overrides) -> path, cached by name."""
    built: dict[str, str] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def build(name: str, preset: str = "tiny", seed: int = 0, **kwargs) -> str:
        if name not in built:
            prior = {"bigram_prior": kwargs.pop("bigram_prior")} if "bigram_prior" in kwargs else {}
            built[name] = str(build_checkpoint(root / name, preset, seed, kwargs, **prior))
        return built[name]

    return build


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoints) -> str:
    return checkpoints("tiny")


@pytest.fixture(scope="session")
def standin_trace(tmp_path_factory) -> str:
    """File where the sgl_kernel stand-in records any placeholder call (set before engines start)."""
    path = str(tmp_path_factory.mktemp("standin") / "calls.txt")
    os.environ["MEGREZ_SGL_KERNEL_TRACE"] = path
    return path


class EnginePool:
    """At most one sglang.Engine alive in the test process: Engine.shutdown() kills every child
    process of the caller (SGLang's blanket kill_process_tree), so a second engine's shutdown
    would kill the first one's scheduler. Asking for another engine shuts the current one down."""

    def __init__(self):
        self.key, self.engine = None, None

    def get(self, model_path: str, **kwargs):
        from megrez_sglang.serving.engine import start_engine

        key = (model_path, tuple(sorted(kwargs.items())))
        if key != self.key and _shared_servers:
            raise RuntimeError(
                "an engine was asked for while the shared server runs: Engine.shutdown() would kill "
                "the server too. A test (or fixture) using the engines must not also use one of "
                f"{sorted(SERVER_FIXTURES | TRAINED_SERVER_FIXTURES)}, which put it in a server lane.")
        if key != self.key:
            self.close()
            kwargs.setdefault("log_level", "error")
            self.engine, self.key = start_engine(model_path, **kwargs), key
        return self.engine

    def close(self):
        if self.engine is not None:
            self.engine.shutdown()
        self.key, self.engine = None, None


@pytest.fixture(scope="session")
def engines(standin_trace):
    pool = EnginePool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def server(tiny_checkpoint, engines, tmp_path_factory):
    """launch_server.sh on the tiny checkpoint, with the card's API key and an admin key; shared by
    the server, programs and eval tests (SIGTERM and fault tests start their own)."""
    engines.close()  # Engine.shutdown() kills every child of this process, a server included
    log = tmp_path_factory.mktemp("server") / "server.log"
    s = ServerProcess(tiny_checkpoint, command=[str(ROOT / "launch_server.sh")], log_path=log,
                      api_key=API_KEY, admin_api_key=ADMIN_KEY)
    _shared_servers.append(s)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def trained_server(engines, tmp_path_factory):
    """launch_server.sh on the trained tiny checkpoint (the default model) in float32, so that
    SGLang and the reference model agree to ~1e-6 and any difference in an answer is the
    pipeline's; the API key only. Shared by the third-party clients' tests and the eval's."""
    engines.close()  # Engine.shutdown() kills every child of this process, a server included
    log = tmp_path_factory.mktemp("trained-server") / "server.log"
    s = ServerProcess(str(TRAINED_CHECKPOINT), command=[str(ROOT / "launch_server.sh")],
                      extra=["--dtype", "float32"], log_path=log, api_key=API_KEY)
    _shared_servers.append(s)
    yield s
    s.stop()


HELD_OUT_BENCHMARKS = ("tiny_math", "tiny_choice")
HELD_OUT_ITEMS = 16  # per benchmark, in the tests that run them through a server


def run_eval(server, out: Path, *args: str) -> dict[str, dict[str, dict]]:
    """`python -m eval` on the first HELD_OUT_ITEMS held-out items of each benchmark, through
    `server`: benchmark -> item id -> record."""
    r = subprocess.run([sys.executable, "-m", "eval", "--base-url", server.url, "--benchmarks",
                        ",".join(HELD_OUT_BENCHMARKS), "--out", str(out), "--no-progress",
                        "--limit", str(HELD_OUT_ITEMS), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MEGREZ_API_KEY": API_KEY})
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: {rec["id"]: rec for rec in map(json.loads, (out / f"{name}.jsonl").open())}
            for name in HELD_OUT_BENCHMARKS}


@pytest.fixture(scope="session")
def trained_free_greedy_eval(trained_server, tmp_path_factory):
    """`python -m eval --free --temperature 0` on the trained server (what both the reference
    model and lm-evaluation-harness are compared with, item by item)."""
    out = tmp_path_factory.mktemp("eval-free-greedy")
    return run_eval(trained_server, out, "--free", "--temperature", "0")


_shared_servers: list[ServerProcess] = []


def pytest_runtest_teardown(item, nextitem):
    # Stop a shared server once its lane is over, before the next lane's server starts (one
    # server alive at a time; stopping twice is harmless).
    if _shared_servers and lane(item) in (2, 3) and (nextitem is None or lane(nextitem) != lane(item)):
        _shared_servers.pop().stop()


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)


@pytest.fixture
def tiny_engine(engines, tiny_checkpoint):
    """The default tiny checkpoint in float32 (radix cache on)."""
    return engines.get(tiny_checkpoint, dtype="float32")


def pytest_sessionfinish(session, exitstatus):
    # An empty run must not pass: pytest already exits 5 when nothing is collected; a run where
    # tests were collected but none passed (all skipped or deselected) fails here too.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and exitstatus == 0 and not reporter.stats.get("passed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
