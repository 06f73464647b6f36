"""Shared fixtures: checkpoints built once per session, engines started once per session.

Importing megrez_sglang first configures SGLang's CPU engine on hosts without CUDA.
"""

from __future__ import annotations

import os

import pytest

import megrez_sglang  # noqa: F401  (configures SGLang for this host before it is imported)
from megrez_sglang.build_checkpoint import build_checkpoint


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
        from megrez_sglang.engine import start_engine

        key = (model_path, tuple(sorted(kwargs.items())))
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
