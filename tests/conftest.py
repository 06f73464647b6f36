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


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint, standin_trace):
    """The default tiny checkpoint in float32 (radix cache on)."""
    from megrez_sglang.engine import start_engine

    engine = start_engine(tiny_checkpoint, dtype="float32", log_level="error")
    yield engine
    engine.shutdown()


def pytest_sessionfinish(session, exitstatus):
    # An empty run must not pass: pytest already exits 5 when nothing is collected; a run where
    # tests were collected but none passed (all skipped or deselected) fails here too.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and exitstatus == 0 and not reporter.stats.get("passed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
