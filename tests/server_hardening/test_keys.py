"""1-2. Keys come from the environment, never the command line, reach no child process, and read
<redacted> wherever the server shows its settings."""

from __future__ import annotations

import os
from types import SimpleNamespace

import psutil
import pytest
import requests

import megrez_sglang.serving.server
from megrez_sglang.serving.hardening import KeyConfigurationError, hardened_server_environment
from megrez_sglang.serving.hardening.keys import keys_from_environment
from megrez_sglang.serving.server import process_title

from ..conftest import ADMIN_KEY, API_KEY
from .replies import (
    bearer,
)
from .routes import sglang_routes


def test_key_settings_that_would_protect_nothing_are_refused():
    with pytest.raises(KeyConfigurationError, match="MEGREZ_ADMIN_API_KEY equals MEGREZ_API_KEY"):
        hardened_server_environment({"MEGREZ_API_KEY": "sk-1", "MEGREZ_ADMIN_API_KEY": "sk-1"})
    assert hardened_server_environment({"MEGREZ_API_KEY": "sk-1"})["MEGREZ_HARDENED_SERVER"] == "1"
    assert "MEGREZ_API_KEY" not in hardened_server_environment({"MEGREZ_API_KEY": ""})  # empty: no key
    with pytest.raises(KeyConfigurationError, match="MEGREZ_API_KEY is blank"):
        hardened_server_environment({"MEGREZ_API_KEY": "  "})


def test_a_key_passed_as_a_flag_is_refused_before_anything_starts(tiny_checkpoint, monkeypatch, capsys):
    def no_server(*args, **kwargs):
        raise AssertionError("the supervisor started SGLang")

    monkeypatch.setattr(megrez_sglang.serving.server.subprocess, "Popen", no_server)
    assert megrez_sglang.serving.server.main([tiny_checkpoint, "--", "--api-key", "sk-visible"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "launch_server: error: --api-key would put the key on the command line")


def server_processes(server) -> list[psutil.Process]:
    supervisor = psutil.Process(server.process.pid)
    return [supervisor, *supervisor.children(recursive=True)]


def test_no_process_of_the_server_has_a_key_in_its_arguments(server):
    processes = server_processes(server)
    assert any(process_title(p).startswith("sglang::scheduler") for p in processes)
    for p in processes:
        arguments = " ".join(p.cmdline())
        assert API_KEY not in arguments and ADMIN_KEY not in arguments, arguments


def test_processes_the_server_starts_do_not_inherit_the_keys(server):
    """The keys are taken out of the server's environment before it starts its workers. The
    scheduler and detokenizer overwrite /proc/<pid>/environ with their process titles; the
    multiprocessing resource tracker, spawned alongside them, shows what they inherited."""
    sglang_server = psutil.Process(server.process.pid).children()[0]
    # it was given them (its own /proc/<pid>/environ keeps the start-up copy: owner-readable only)
    assert sglang_server.environ()["MEGREZ_API_KEY"] == API_KEY
    witnesses = [p.environ() for p in sglang_server.children(recursive=True) if p.environ()]
    assert witnesses and all(w.get("MEGREZ_HARDENED_SERVER") == "1" for w in witnesses)
    for environment in witnesses:
        assert not {API_KEY, ADMIN_KEY} & set(environment.values())
        assert not {"MEGREZ_API_KEY", "MEGREZ_ADMIN_API_KEY"} & set(environment)


def test_the_keys_are_read_from_the_environment_and_removed_from_it(monkeypatch):
    monkeypatch.setenv("MEGREZ_API_KEY", "sk-user")
    monkeypatch.setenv("MEGREZ_ADMIN_API_KEY", "sk-admin")
    args = keys_from_environment(SimpleNamespace(api_key=None, admin_api_key=None), ["--port", "1"])
    assert (args.api_key, args.admin_api_key) == ("sk-user", "sk-admin")
    assert "MEGREZ_API_KEY" not in os.environ and "MEGREZ_ADMIN_API_KEY" not in os.environ


def test_server_info_reports_the_keys_redacted(server):
    info = requests.get(f"{server.url}/server_info", headers=bearer(API_KEY), timeout=30).json()
    assert (info["api_key"], info["admin_api_key"]) == ("<redacted>", "<redacted>")
    scheduler_state = info["internal_states"][0]  # computed in the scheduler process
    assert (scheduler_state["api_key"], scheduler_state["admin_api_key"]) == ("<redacted>", "<redacted>")


def test_no_get_endpoint_answers_with_a_key(server):
    answered = {}
    for route in sglang_routes():
        if "GET" not in route.methods:
            continue
        if route.control and not route.methods <= {"GET", "HEAD"}:
            continue  # GET+POST control routes are actions (start_profile...), not information
        key = ADMIN_KEY if route.control else API_KEY
        r = requests.get(f"{server.url}{route.url_path}", headers=bearer(key), timeout=60)
        answered[route.path] = r.status_code
        assert API_KEY not in r.text and ADMIN_KEY not in r.text, route.path
    for path in ("/server_info", "/get_server_info", "/model_info", "/v1/models", "/v1/loads"):
        assert answered[path] == 200, path  # the endpoints that describe the server did answer


def test_the_server_log_holds_no_key(server):
    log = server.log_path.read_text(errors="replace")
    assert "'api_key': '<redacted>', 'admin_api_key': '<redacted>'" in log  # SGLang's server_args line
    assert API_KEY not in log and ADMIN_KEY not in log
