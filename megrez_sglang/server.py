"""Start SGLang's HTTP server (OpenAI-compatible API) for a Megrez2 checkpoint and supervise it.

    python -m megrez_sglang.server [MODEL_PATH] [--host H] [--port P] [--tp N]
                                   [--served-model-name NAME] [-- extra SGLang flags]

(launch_server.sh is the user-facing wrapper.) Checks the model path and the port first, starts
``python -m sglang.launch_server`` in its own process group with this host's settings (see
engine.py), prints the URL once /health answers, and on SIGTERM/SIGINT stops every process it
started. The API key comes from MEGREZ_API_KEY when set.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .cpu_runtime import configure_sglang_for_host
from .engine import engine_args
from .model_path import ModelPathError, resolve_model_path

API_KEY_ENV = "MEGREZ_API_KEY"
DEFAULT_PORT = 30000
SERVED_MODEL_NAME = "megrez-moe"
STARTUP_TIMEOUT_S = 600


class ServerError(RuntimeError):
    pass


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: stop the server, exit with 128 + the signal number."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def sglang_flags(args: dict) -> list[str]:
    """ServerArgs keyword arguments as `python -m sglang.launch_server` flags."""
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (False, None):
            flags += [flag, str(value)]
    return flags


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel reports free on `host` now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the SGLang server exited with status {process.returncode} before "
                              "it was healthy (its log is above)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise ServerError(f"the SGLang server was not healthy after {timeout:.0f} s")


def stop(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the server's whole process group (server, scheduler(s), detokenizer), then
    SIGKILL whatever is left after the grace period."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
    except ProcessLookupError:
        pass
    process.wait()


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="launch_server.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("model_path", nargs="?", help="Megrez2 checkpoint directory or hub id "
                   "(default: the project's tiny checkpoint)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    p.add_argument("--served-model-name", default=SERVED_MODEL_NAME)
    return p.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    device = configure_sglang_for_host()  # also exports the CPU settings to the child processes
    try:
        model = resolve_model_path(args.model_path)
    except ModelPathError as e:
        print(f"launch_server: error: {e}", file=sys.stderr)
        return 2
    if not port_is_free(args.host, args.port):
        print(f"launch_server: error: port {args.port} on {args.host} is already in use "
              "(choose another with --port)", file=sys.stderr)
        return 2

    server_args = engine_args(model, device=device, tp_size=args.tp)
    server_args.update(
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        api_key=os.environ.get(API_KEY_ENV) or None,
        enable_cache_report=True,  # usage.prompt_tokens_details.cached_tokens in OpenAI replies
        # Compact JSON under json_schema/json_object: otherwise xgrammar lets a weak model pad
        # the object with whitespace until max_tokens.
        constrained_json_disable_any_whitespace=True,
    )
    command = [sys.executable, "-m", "sglang.launch_server", *sglang_flags(server_args), *extra]
    process = subprocess.Popen(command, start_new_session=True)

    def on_signal(signum, _frame):
        # Unwind the main thread (it may be inside process.wait()); `finally` stops the server.
        raise Stopped(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = f"http://{args.host}:{args.port}"
    try:
        wait_until_healthy(url, process, STARTUP_TIMEOUT_S)
        print(f"Megrez2 ({args.served_model_name}) is being served at {url} "
              f"(OpenAI API: {url}/v1)", flush=True)
        return process.wait()
    except ServerError as e:
        print(f"launch_server: error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        return e.status
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop(process)


class ServerProcess:
    """This module's server (or launch_server.sh) started as a child process, for tests,
    benchmarks and scripts: returns once it has printed its URL (i.e. /health answered).

        with ServerProcess(model, api_key="sk-...") as server:
            requests.get(f"{server.url}/health")

    `command` replaces ``python -m megrez_sglang.server`` (e.g. the path of launch_server.sh);
    `env` is added to this process's environment (e.g. MEGREZ_API_KEY); stderr goes to `log_path`
    (or is discarded)."""

    def __init__(self, model: str | None = None, *, port: int | None = None,
                 host: str = "127.0.0.1", args: Sequence[str] = (), extra: Sequence[str] = (),
                 env: dict[str, str] | None = None, command: Sequence[str] | None = None,
                 log_path: str | Path | None = None, timeout_s: float = STARTUP_TIMEOUT_S):
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        command = list(command or [sys.executable, "-m", "megrez_sglang.server"])
        argv = [*command, *([model] if model else []), "--host", host, "--port", str(self.port),
                *args, *(["--", *extra] if extra else [])]
        self.log_path = Path(log_path) if log_path else None
        self._log = open(self.log_path, "w+") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        env={**os.environ, **(env or {})})
        self.announcement = self._wait_for_announcement(timeout_s)

    def _wait_for_announcement(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        for line in self.process.stdout:  # the supervisor prints the URL once healthy
            if "is being served at" in line:
                return line
            if time.monotonic() > deadline:
                break
        self.stop()
        raise ServerError(f"the server did not start; its log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None:
            return "(no log_path given)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (the supervisor stops everything it started); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self._log, "close"):
            self._log.close()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
