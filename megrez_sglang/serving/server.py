"""Start SGLang's HTTP server (OpenAI-compatible API) for a Megrez2 checkpoint and supervise it.

    python -m megrez_sglang.serving.server [MODEL_PATH] [--host H] [--port P] [--tp N] [--dp N]
                                   [--nnodes N --node-rank R --dist-init-addr HOST:PORT]
                                   [--served-model-name NAME] [--shutdown-timeout S]
                                   [--max-n N] [--max-prompts N] [--max-request-tokens N]
                                   [--max-pending-tokens N] [--max-body-bytes N]
                                   [--request-read-timeout S] [--max-connections N]
                                   [-- extra SGLang flags]

(launch_server.sh is the user-facing wrapper.) Checks the model path, the keys and the port first,
starts ``sglang serve`` in its own process group with this host's settings (see engine.py) and
this project's hardening (serving/hardening/: keys from MEGREZ_API_KEY / MEGREZ_ADMIN_API_KEY via
the environment, control endpoints admin-only, token ids checked), prints the URL once /health
answers, and then watches it:

* SIGTERM / SIGINT: SGLang finishes the requests in flight; those still running after
  --shutdown-timeout seconds are aborted; then it stops, exit 0 (1 if it had to be killed,
  SHUTDOWN_MARGIN_S later). Every process it started is gone afterwards.
* SGLang's server or one of its scheduler/detokenizer processes dies: every process is stopped
  and the supervisor exits 1 with a one-line reason (service managers restart on that).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil

from ..model.model_path import ModelPathError, resolve_model_path
from .cpu_runtime import configure_sglang_for_host
from .engine import engine_args
from .hardening import (
    ADMIN_API_KEY_ENV,
    API_KEY_ENV,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_N,
    DEFAULT_MAX_PROMPTS,
    DEFAULT_READ_TIMEOUT_S,
    AdmissionLimits,
    ConnectionLimits,
    KeyConfigurationError,
    OverloadLimits,
    hardened_server_environment,
)

DEFAULT_PORT = 30000
SERVED_MODEL_NAME = "megrez-moe"
STARTUP_TIMEOUT_S = 600
# After SIGTERM: requests in flight get --shutdown-timeout seconds; SGLang then needs a few more
# to see them gone (it polls every 5 s) and stop its workers; SIGKILL only after this margin.
SHUTDOWN_MARGIN_S = 30.0
# `sglang serve` (the console script of sglang.cli.main; that module has no __main__ guard),
# started with this interpreter so that it sees the same environment.
SGLANG_SERVE = [sys.executable, "-c", "import sys; from sglang.cli.main import main; sys.exit(main())",
                "serve"]
KEY_FLAGS = ("--api-key", "--admin-api-key")


class ServerError(RuntimeError):
    pass


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: stop the server."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def sglang_flags(args: dict) -> list[str]:
    """ServerArgs keyword arguments as `sglang serve` flags."""
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (False, None):
            flags += [flag, str(value)]
    return flags


def serve_command(server_args: dict, extra: Sequence[str] = ()) -> list[str]:
    """The `sglang serve` command line for ServerArgs keyword arguments (plus raw extra flags).
    Start it with hardened_server_environment() as its environment: keys never go in here."""
    return [*SGLANG_SERVE, *sglang_flags(server_args), *extra]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel reports free on `host` now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether SGLang's server could listen on host:port: bound the way uvicorn binds it
    (uvicorn.Config.bind_socket: SO_REUSEADDR, so connections of a stopped server still in
    TIME_WAIT do not count as "in use"; IPv6 when the host has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def exit_reason(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the SGLang server {exit_reason(process.returncode)} before it was "
                              "healthy (its log is above)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise ServerError(f"the SGLang server was not healthy after {timeout:.0f} s")


def sglang_processes(process: subprocess.Popen) -> list[psutil.Process]:
    """SGLang's worker processes under the server (scheduler(s), detokenizer): they name
    themselves sglang::<role> (setproctitle)."""
    found = []
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if process_title(child).startswith("sglang::"):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def process_title(p: psutil.Process) -> str:
    return " ".join(p.cmdline()).strip()  # setproctitle pads the title with spaces


def is_alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(process: subprocess.Popen, poll_s: float = 0.5) -> str:
    """Block while the server and its workers are alive; the reason when one of them is not."""
    workers = [(p, process_title(p)) for p in sglang_processes(process)]
    while True:
        try:
            return f"the SGLang server {exit_reason(process.wait(timeout=poll_s))}"
        except subprocess.TimeoutExpired:
            pass
        for worker, name in workers:
            if not is_alive(worker):
                role = name.removeprefix("sglang::")
                return f"SGLang's {role} process (pid {worker.pid}) died"


def stop(process: subprocess.Popen, grace_s: float) -> bool:
    """Stop the server and everything it started. SIGTERM goes to SGLang's server process only:
    its tokenizer manager then drains the requests in flight (with a deadline, see
    serving/hardening) and stops its scheduler and detokenizer (SIGTERM to the whole group would
    kill the scheduler under running requests). Whatever is left of the process group after
    `grace_s` is SIGKILLed. True if it stopped in time."""
    in_time = True
    if process.poll() is None and grace_s > 0:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            in_time = False
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
    except ProcessLookupError:
        pass
    process.wait()
    return in_time


def split_at_double_dash(argv: list[str]) -> tuple[list[str], list[str]]:
    """The script's own arguments, and the SGLang flags after `--`."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    argv, extra = split_at_double_dash(argv)
    p = argparse.ArgumentParser(prog="launch_server.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("model_path", nargs="?", help="Megrez2 checkpoint directory or hub id "
                   "(default: the project's tiny checkpoint)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (GPUs per replica)")
    p.add_argument("--dp", type=int, default=1, help="data parallel size: replicas inside this server, "
                   "each with --tp GPUs; SGLang balances requests over them")
    nodes = p.add_argument_group("several machines (SGLang's flags): one tensor-parallel model over "
                                 "--nnodes machines, this command on each with its --node-rank")
    nodes.add_argument("--nnodes", type=int, default=1, help="machines (default 1)")
    nodes.add_argument("--node-rank", type=int, default=0, help="this machine's rank; rank 0 serves HTTP")
    nodes.add_argument("--dist-init-addr", metavar="HOST:PORT",
                       help="where rank 0 listens for the other machines (an address they can reach)")
    p.add_argument("--served-model-name", default=SERVED_MODEL_NAME)
    p.add_argument("--shutdown-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="S",
                   help="on SIGTERM, seconds the requests in flight get to finish before they are "
                   f"aborted (default {DEFAULT_DRAIN_TIMEOUT_S:.0f})")
    limits = p.add_argument_group("admission limits: what one request may ask for (more: a 400 naming "
                                  "the limit)")
    limits.add_argument("--max-n", type=int, default=DEFAULT_MAX_N, metavar="N",
                        help=f"samples per prompt (OpenAI's n; default {DEFAULT_MAX_N})")
    limits.add_argument("--max-prompts", type=int, default=DEFAULT_MAX_PROMPTS, metavar="N",
                        help=f"prompts in one request (/generate and /v1/completions lists; default "
                        f"{DEFAULT_MAX_PROMPTS})")
    limits.add_argument("--max-request-tokens", type=int, default=0, metavar="N",
                        help="new tokens one request may ask for in all, prompts x n x max_tokens (an unset "
                        "max_tokens counts as the context length); default 0: the KV pool's size")
    load = p.add_argument_group("overload and connection limits: what all requests together and one "
                                "connection may hold")
    load.add_argument("--max-pending-tokens", type=int, default=0, metavar="N",
                      help="tokens all admitted, unfinished generation requests may take, prompt + n x "
                      "max_tokens each; a request past it gets 429 with Retry-After; default 0: the KV "
                      "pool's size")
    load.add_argument("--max-body-bytes", type=int, default=0, metavar="N",
                      help="largest request body (413 above it, before it is read); default 0: 16 bytes per "
                      "token of the context + 1 MiB")
    load.add_argument("--request-read-timeout", type=float, default=DEFAULT_READ_TIMEOUT_S, metavar="S",
                      help="seconds a connection has to send a whole request, headers and body (408 and "
                      f"closed after; default {DEFAULT_READ_TIMEOUT_S:g})")
    load.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                      help="open connections (one more gets 503 and is closed; default "
                      f"{DEFAULT_MAX_CONNECTIONS})")
    args = p.parse_args(argv)
    for name in ("max_pending_tokens", "max_body_bytes"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0 (0: the default), got {getattr(args, name)}")
    if not args.request_read_timeout > 0:
        p.error(f"--request-read-timeout must be > 0 seconds, got {args.request_read_timeout}")
    for name in ("tp", "dp", "nnodes", "max_n", "max_prompts", "max_connections"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_request_tokens < 0:
        p.error(f"--max-request-tokens must be >= 0 (0: the KV pool's size), got {args.max_request_tokens}")
    if not 0 <= args.node_rank < args.nnodes:
        p.error(f"--node-rank must lie in 0..{args.nnodes - 1} (--nnodes {args.nnodes}), "
                f"got {args.node_rank}")
    if args.nnodes > 1 and not args.dist_init_addr:
        p.error(f"--nnodes {args.nnodes} needs --dist-init-addr HOST:PORT (node rank 0's address, the same "
                "on every machine)")
    if (args.tp * args.dp) % args.nnodes:
        p.error(f"--tp x --dp = {args.tp * args.dp} ranks cannot be split evenly over --nnodes {args.nnodes}")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    device = configure_sglang_for_host()  # also exports the CPU settings to the child processes

    def fail(message: str) -> int:
        print(f"launch_server: error: {message}", file=sys.stderr)
        return 2

    key_flags = [a for a in extra if a.split("=", 1)[0] in KEY_FLAGS]
    if key_flags:
        return fail(f"{key_flags[0].split('=', 1)[0]} would put the key on the command line, where "
                    f"every local user sees it (ps); set {API_KEY_ENV} / {ADMIN_API_KEY_ENV} instead")
    try:
        hardened_server_environment()  # the keys are checked first; the environment is built below
    except KeyConfigurationError as e:
        return fail(str(e))
    try:
        model = resolve_model_path(args.model_path)
    except ModelPathError as e:
        return fail(str(e))
    if not port_is_free(args.host, args.port):
        return fail(f"port {args.port} on {args.host} is already in use (choose another with --port)")

    server_args = engine_args(model, device=device, tp_size=args.tp, dp_size=args.dp, nnodes=args.nnodes)
    if args.nnodes > 1:
        server_args.update(node_rank=args.node_rank, dist_init_addr=args.dist_init_addr)
    server_args.update(
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        enable_cache_report=True,  # usage.prompt_tokens_details.cached_tokens in OpenAI replies
        # Compact JSON under json_schema/json_object: otherwise xgrammar lets a weak model pad
        # the object with whitespace until max_tokens.
        constrained_json_disable_any_whitespace=True,
    )
    # After engine_args: it may have set this host's CPU thread binding in os.environ.
    environment = hardened_server_environment(
        drain_timeout_s=args.shutdown_timeout,
        limits=AdmissionLimits(args.max_n, args.max_prompts, args.max_request_tokens),
        overload=OverloadLimits(args.max_pending_tokens),
        connections=ConnectionLimits(args.max_body_bytes, args.request_read_timeout, args.max_connections))
    process = subprocess.Popen(serve_command(server_args, extra), start_new_session=True, env=environment)

    def on_signal(signum, _frame):
        # Unwind the main thread (it may be inside process.wait()); the handlers below stop it.
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = f"http://{args.host}:{args.port}"
    try:
        wait_until_healthy(url, process, STARTUP_TIMEOUT_S)
        if args.node_rank == 0:
            print(f"Megrez2 ({args.served_model_name}) is being served at {url} "
                  f"(OpenAI API: {url}/v1)", flush=True)
        else:  # SGLang answers only /health here: requests go to node rank 0
            print(f"node rank {args.node_rank} of {args.nnodes} is serving its share of the model "
                  f"(requests go to node rank 0; health at {url}/health)", flush=True)
        reason = watch(process)
    except ServerError as e:
        reason = str(e)
    except Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        grace_s = args.shutdown_timeout + SHUTDOWN_MARGIN_S
        if stop(process, grace_s):
            return 0
        print(f"launch_server: error: the server did not stop within {grace_s:.0f} s of SIGTERM; "
              "killed it", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Something died on its own: nothing is left to drain (SGLang's own reaction to a dead worker
    # is to kill its process tree, after 5 s spent on crash diagnostics).
    stop(process, grace_s=0)
    print(f"launch_server: error: {reason}; every process of the server is stopped", file=sys.stderr)
    return 1


# What the supervisor prints once it serves: node rank 0 (or a single machine), node rank >= 1.
ANNOUNCEMENTS = ("is being served at", "is serving its share of the model")


class ServerProcess:
    """This module's server (or launch_server.sh) started as a child process, for tests,
    benchmarks and scripts: returns once it has printed its URL (i.e. /health answered).

        with ServerProcess(model, api_key="sk-...", admin_api_key="sk-admin-...") as server:
            requests.get(f"{server.url}/health")

    `command` replaces ``python -m megrez_sglang.serving.server`` (e.g. the path of launch_server.sh);
    `env` is added to this process's environment; the keys travel in it as MEGREZ_API_KEY /
    MEGREZ_ADMIN_API_KEY. The server's whole output (stdout and stderr) goes to `log_path` (or is
    discarded); stdout is read to the end so that the server never blocks on a full pipe.
    `wait=False` returns at once (start several, then wait_until_announced() on each)."""

    def __init__(self, model: str | None = None, *, port: int | None = None,
                 host: str = "127.0.0.1", args: Sequence[str] = (), extra: Sequence[str] = (),
                 api_key: str | None = None, admin_api_key: str | None = None,
                 env: dict[str, str] | None = None, command: Sequence[str] | None = None,
                 log_path: str | Path | None = None, timeout_s: float = STARTUP_TIMEOUT_S,
                 wait: bool = True):
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        command = list(command or [sys.executable, "-m", "megrez_sglang.serving.server"])
        argv = [*command, *([model] if model else []), "--host", host, "--port", str(self.port),
                *args, *(["--", *extra] if extra else [])]
        keys = {API_KEY_ENV: api_key, ADMIN_API_KEY_ENV: admin_api_key}
        environment = {**os.environ, **(env or {}), **{k: v for k, v in keys.items() if v}}
        self.log_path = Path(log_path) if log_path else None
        if self.log_path:  # O_APPEND: the server's stderr and the stdout copied below share it
            self.log_path.write_text("")
        self._log = open(self.log_path, "a", buffering=1) if self.log_path else None
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log or subprocess.DEVNULL,
                                        text=True, env=environment)
        self._announced = threading.Event()
        self.announcement = ""
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        if wait:
            self.wait_until_announced(timeout_s)

    def wait_until_announced(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Return once the server printed its URL; stop it and raise ServerError if it exited or
        did not within `timeout_s`."""
        if not self._announced.wait(timeout_s) or not self.announcement:
            self.stop()
            raise ServerError(f"the server did not start; its log:\n{self.log_tail()}")

    def _read_stdout(self) -> None:
        for line in self.process.stdout:  # the supervisor prints the URL once healthy
            if not self.announcement and any(m in line for m in ANNOUNCEMENTS):
                self.announcement = line
                self._announced.set()
            if self._log is not None and not self._log.closed:
                self._log.write(line)
        self._announced.set()  # the server exited without announcing

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None:
            return "(no log_path given)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 2 * (DEFAULT_DRAIN_TIMEOUT_S + SHUTDOWN_MARGIN_S)) -> int:
        """SIGTERM (the supervisor stops everything it started); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        if self._log is not None:
            self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
