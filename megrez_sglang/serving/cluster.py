"""Several replicas of the server behind SGLang's router: one URL, requests spread over workers.

    python -m megrez_sglang.serving.cluster [MODEL_PATH] [--replicas K] [--worker-url URL ...]
                                    [--policy cache_aware|round_robin|power_of_two|random]
                                    [--host 127.0.0.1] [--port 30000] [--tp N] [--dp N]
                                    [--served-model-name NAME] [--shutdown-timeout S]
                                    [--log-dir DIR] [-- extra SGLang flags for the local workers]

Needs the `cluster` extra (sglang-router). Starts K local workers with this project's supervisor
(megrez_sglang.serving.server, as launch_server.sh: each on a 127.0.0.1 port of its own and its own
GPUs, worker i from GPU i x tp x dp on), then SGLang's router over them and over any remote
workers (--worker-url: launch_server.sh on other machines, started with the same
MEGREZ_API_KEY). The router is sglang-router's own, started by megrez_sglang.serving.gateway so that the
keys stay out of every process's arguments. Prints the URL once every worker is registered and
healthy at the router.

Keys, from the environment as for launch_server.sh: MEGREZ_API_KEY is required by the router and
by the workers; MEGREZ_ADMIN_API_KEY opens the workers' control endpoints and the router's
control plane (/workers, /get_loads, /flush_cache). Without it both are closed (the cluster
watches the router with a random key of its own).

Policies (sglang-router's): cache_aware (default) sends a request to the worker whose cache holds
the longest part of its prompt, unless the loads are too uneven; round_robin; power_of_two (the
less loaded of two random workers); random.

SIGTERM / Ctrl-C: the router stops taking requests and finishes those in flight
(--shutdown-timeout), then every worker stops; exit 0. A local worker that dies is taken out of
the router, which serves from the others (a one-line note); when the router dies, or no worker
is left, everything stops and the cluster exits 1 with a one-line reason. Logs: --log-dir (by
default a new temporary directory, named on stderr): worker-<i>.log and router.log.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..model.model_path import ModelPathError, resolve_model_path
from .cpu_runtime import configure_sglang_for_host
from .engine import CPU_THREADS_BIND_ENV, cpu_threads_binding
from .hardening import (
    ADMIN_API_KEY_ENV,
    API_KEY_ENV,
    DEFAULT_DRAIN_TIMEOUT_S,
    KeyConfigurationError,
    environment_keys,
)
from .server import (
    DEFAULT_PORT,
    KEY_FLAGS,
    SERVED_MODEL_NAME,
    SHUTDOWN_MARGIN_S,
    STARTUP_TIMEOUT_S,
    ServerError,
    ServerProcess,
    Stopped,
    exit_reason,
    port_is_free,
    split_at_double_dash,
)

POLICIES = ("cache_aware", "round_robin", "power_of_two", "random")
# The router checks each worker's /health this often, and takes it out of rotation after
# HEALTH_FAILURES failures in a row (sglang-router: every 60 s, 3 failures). Meanwhile a request
# that fails on a worker (refused, cut off) is retried (5 attempts, 50 ms backoff growing 1.5x);
# after CIRCUIT_FAILURES failures in a row the router stops picking that worker for a while, so
# the later attempts go elsewhere (sglang-router: 10, more than the attempts of one request, so
# a cache-aware retry could pick the same dead worker every time).
HEALTH_CHECK_INTERVAL_S = 5
HEALTH_FAILURES = 2
CIRCUIT_FAILURES = 3
# Flags the cluster sets on each local worker itself.
WORKER_FLAGS = ("--base-gpu-id", "--host", "--port")


class ClusterError(RuntimeError):
    pass


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    argv, extra = split_at_double_dash(argv)
    p = argparse.ArgumentParser(prog="python -m megrez_sglang.serving.cluster",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("model_path", nargs="?", help="Megrez2 checkpoint directory or hub id for the local "
                   "workers (default: the project's tiny checkpoint)")
    p.add_argument("--replicas", type=int, default=2, help="local workers (default 2; 0: remote ones only)")
    p.add_argument("--worker-url", action="append", default=[], metavar="URL",
                   help="a running server to route to as well, e.g. http://10.0.0.2:30000 (repeatable)")
    p.add_argument("--policy", choices=POLICIES, default="cache_aware", help="how the router picks a worker")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface the router listens on (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="the router's port")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size of each local worker")
    p.add_argument("--dp", type=int, default=1, help="data parallel size of each local worker")
    p.add_argument("--served-model-name", default=SERVED_MODEL_NAME)
    p.add_argument("--shutdown-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="S",
                   help="on SIGTERM, seconds the requests in flight get to finish "
                   f"(default {DEFAULT_DRAIN_TIMEOUT_S:.0f})")
    p.add_argument("--log-dir", type=Path, help="where worker-<i>.log and router.log go "
                   "(default: a new temporary directory)")
    args = p.parse_args(argv)
    for name in ("replicas", "tp", "dp"):
        if getattr(args, name) < (0 if name == "replicas" else 1):
            p.error(f"--{name} must be >= {0 if name == 'replicas' else 1}, got {getattr(args, name)}")
    for url in args.worker_url:
        if not url.startswith(("http://", "https://")) or url.rstrip("/").count("/") != 2:
            p.error(f"--worker-url {url!r} is not a server's base URL (like http://10.0.0.2:30000)")
    args.worker_url = [u.rstrip("/") for u in args.worker_url]
    if args.replicas == 0 and not args.worker_url:
        p.error("nothing to route to: start local workers (--replicas K) and/or name running ones "
                "(--worker-url URL)")
    if args.replicas == 0 and args.model_path:
        p.error("MODEL_PATH is for local workers, and --replicas is 0")
    return args, extra


def local_worker_environment(device: str, replicas: int, ranks_per_worker: int) -> dict[str, str]:
    """On a CPU host: one thread binding for the ranks of all local workers; worker i's ranks have
    device ids from i x ranks_per_worker on (its --base-gpu-id), which pick their entries. One
    rank in all: none, as launch_server.sh sets none for one rank (nothing to keep apart)."""
    if device == "cuda" or CPU_THREADS_BIND_ENV in os.environ or replicas * ranks_per_worker == 1:
        return {}
    return {CPU_THREADS_BIND_ENV: cpu_threads_binding(replicas * ranks_per_worker)}


class Router:
    """sglang-router (through megrez_sglang.serving.gateway) as a child process in its own session."""

    def __init__(self, worker_urls: list[str], *, host: str, port: int, policy: str, api_key: str | None,
                 admin_key: str, shutdown_timeout_s: float, log_path: Path):
        self.url = f"http://{host}:{port}"
        self.admin_key = admin_key
        argv = [sys.executable, "-m", "megrez_sglang.serving.gateway", "--worker-urls", *worker_urls,
                "--host", host, "--port", str(port), "--policy", policy,
                "--worker-startup-timeout-secs", str(STARTUP_TIMEOUT_S),
                "--worker-startup-check-interval", "1",
                "--health-check-interval-secs", str(HEALTH_CHECK_INTERVAL_S),
                "--health-failure-threshold", str(HEALTH_FAILURES),
                "--cb-failure-threshold", str(CIRCUIT_FAILURES),
                "--shutdown-grace-period-secs", str(max(1, round(shutdown_timeout_s)))]
        env = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, ADMIN_API_KEY_ENV)}
        env[ADMIN_API_KEY_ENV] = admin_key
        if api_key:
            env[API_KEY_ENV] = api_key
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def control(self, method: str, path: str) -> dict:
        """A control-plane call (admin key)."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"Bearer {self.admin_key}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def healthy_workers(self) -> dict[str, str]:
        """url -> worker id of the workers the router has registered and finds healthy."""
        workers = self.control("GET", "/workers")["workers"]
        return {w["url"].rstrip("/"): w["id"] for w in workers if w.get("is_healthy")}

    def wait_until_serving(self, urls: list[str], timeout_s: float) -> None:
        deadline, missing = time.monotonic() + timeout_s, urls
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"the router {exit_reason(self.process.returncode)} before it served "
                                   f"(its log: {self.log_path})")
            try:
                missing = sorted(set(urls) - set(self.healthy_workers()))
                if not missing:
                    with urllib.request.urlopen(f"{self.url}/readiness", timeout=10) as r:
                        if r.status == 200:
                            return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise ClusterError(f"the router had not registered {', '.join(missing)} as healthy after "
                           f"{timeout_s:.0f} s (are they running, with the same {API_KEY_ENV}? the "
                           f"router's log: {self.log_path})")

    def remove(self, url: str) -> None:
        """Take the worker at `url` out of the router, also when its health checks have already
        marked it unhealthy (it would stay listed, and be probed, for good)."""
        for worker in self.control("GET", "/workers")["workers"]:
            if worker["url"].rstrip("/") == url:
                self.control("DELETE", f"/workers/{worker['id']}")

    def stop(self, grace_s: float) -> bool:
        """SIGTERM (sglang-router finishes the requests in flight), SIGKILL after `grace_s`."""
        in_time = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                in_time = False
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        return in_time


def start_workers(model: str, args: argparse.Namespace, extra: list[str], device: str,
                  log_dir: Path) -> list[ServerProcess]:
    ranks = args.tp * args.dp
    env = local_worker_environment(device, args.replicas, ranks)
    workers = []
    for i in range(args.replicas):
        workers.append(ServerProcess(
            model, host="127.0.0.1", wait=False, env=env, log_path=log_dir / f"worker-{i}.log",
            args=["--tp", str(args.tp), "--dp", str(args.dp), "--served-model-name", args.served_model_name,
                  "--shutdown-timeout", str(args.shutdown_timeout)],
            extra=[*extra, "--base-gpu-id", str(i * ranks)]))
    return workers


def worker_failure(worker: ServerProcess) -> str:
    """Why a worker's supervisor stopped: its one-line reason, else its exit status."""
    for line in reversed(worker.log_tail(4000).splitlines()):
        if line.startswith("launch_server: error: "):
            return line.removeprefix("launch_server: error: ").split("; every process")[0]
    return f"its supervisor {exit_reason(worker.process.returncode)}"


def supervise(router: Router, workers: list[ServerProcess], remote: list[str], poll_s: float = 0.5) -> str:
    """Block while the router serves; take dead local workers out of it. The reason it stopped."""
    alive = list(workers)
    while True:
        try:
            return f"the router {exit_reason(router.process.wait(timeout=poll_s))}"
        except subprocess.TimeoutExpired:
            pass
        for worker in [w for w in alive if w.process.poll() is not None]:
            alive.remove(worker)
            print(f"cluster: the worker at {worker.url} stopped: {worker_failure(worker)} (its log: "
                  f"{worker.log_path}); the router serves from the others", file=sys.stderr, flush=True)
            try:
                router.remove(worker.url)
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError):
                pass  # the router's own health checks take it out
        if not alive and not remote:
            return "every worker has stopped"


def stop_all(router: Router | None, workers: list[ServerProcess], shutdown_timeout_s: float) -> bool:
    """The router first (no new requests; those in flight finish), then the workers, together.
    True if every process still running stopped within its grace period."""
    grace_s = shutdown_timeout_s + SHUTDOWN_MARGIN_S
    in_time = router.stop(grace_s) if router is not None else True
    running = [w for w in workers if w.process.poll() is None]
    for worker in running:  # SIGTERM to all first, so that they drain in parallel
        worker.process.send_signal(signal.SIGTERM)
    statuses = [w.stop(timeout_s=grace_s) for w in workers]
    return in_time and all(status == 0 for w, status in zip(workers, statuses, strict=True) if w in running)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    device = configure_sglang_for_host()

    def fail(message: str) -> int:
        print(f"cluster: error: {message}", file=sys.stderr)
        return 2

    flags = [a.split("=", 1)[0] for a in extra]
    key_flags = [f for f in flags if f in KEY_FLAGS]
    if key_flags:
        return fail(f"{key_flags[0]} would put the key on the command line, where every local user sees "
                    f"it (ps); set {API_KEY_ENV} / {ADMIN_API_KEY_ENV} instead")
    reserved = [f for f in flags if f in WORKER_FLAGS]
    if reserved:
        return fail(f"{reserved[0]} is set by the cluster for each local worker; leave it out")
    try:
        api_key, admin_key = environment_keys()
    except KeyConfigurationError as e:
        return fail(str(e))
    model = None
    if args.replicas:
        try:
            model = resolve_model_path(args.model_path)
        except ModelPathError as e:
            return fail(str(e))
    if not port_is_free(args.host, args.port):
        return fail(f"port {args.port} on {args.host} is already in use (choose another with --port)")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="megrez-cluster-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"cluster: logs in {log_dir}", file=sys.stderr, flush=True)

    def on_signal(signum, _frame):
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers: list[ServerProcess] = []
    router = None
    try:
        if model is not None:
            workers = start_workers(model, args, extra, device, log_dir)
        urls = [w.url for w in workers] + args.worker_url
        # Started at once: the router registers each worker as soon as it answers.
        router = Router(urls, host=args.host, port=args.port, policy=args.policy, api_key=api_key,
                        admin_key=admin_key or secrets.token_urlsafe(32),
                        shutdown_timeout_s=args.shutdown_timeout, log_path=log_dir / "router.log")
        for i, worker in enumerate(workers):
            try:
                worker.wait_until_announced(STARTUP_TIMEOUT_S)
            except ServerError:
                raise ClusterError(f"worker {i} did not start (its log: {worker.log_path})") from None
        router.wait_until_serving(urls, STARTUP_TIMEOUT_S)
        url = router.url
        print(f"Megrez2 ({args.served_model_name}) is being served at {url} (OpenAI API: {url}/v1) by "
              f"{len(urls)} workers through sglang-router, policy {args.policy}: {' '.join(urls)}",
              flush=True)
        reason = supervise(router, workers, args.worker_url)
    except ClusterError as e:
        reason = str(e)
    except Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if stop_all(router, workers, args.shutdown_timeout):
            return 0
        print("cluster: error: not every process stopped in time after SIGTERM; killed them", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_all(router, workers, args.shutdown_timeout)
    print(f"cluster: error: {reason}; every process of the cluster is stopped", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
