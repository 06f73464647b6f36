"""eval/sandbox.py: generated code is contained when the eval runs as root ("namespaces") and as
an unprivileged user ("user-namespaces", run here as `nobody` through setpriv); without isolation
it does not run unless the user allows it, and then every record says "none"."""

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from eval import sandbox
from eval.sandbox import SandboxUnavailable, isolation_level, run_program

from .conftest import API_KEY, ROOT

FIXTURE_MIRROR = Path(__file__).parent / "data" / "benchmarks"
SECRET = "secret-token-7c1f"
# What generated code might try. Each must fail (a non-zero exit or a timeout), print none of the
# words that mean it got through, and change nothing outside.
HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "memory hog": "x = bytearray(8 << 30)\nprint('allocated')\n",
    "network connection": (
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)\nprint('connected')\n"),
    "write outside the temporary directory": "open({target!r}, 'w').write('pwned')\nprint('wrote')\n",
    "remount the file system writable, then write": (
        "import subprocess\n"
        "for point in ('/', {outside!r}):\n"
        "    subprocess.run(['mount', '-o', 'remount,bind,rw', point])\n"
        "open({target!r}, 'w').write('pwned')\nprint('wrote')\n"),
    "read a secret in the home directory": "print(open({secret!r}).read())\n",
    "see the processes outside": (
        "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "assert len(pids) > 3, pids\nprint('saw', len(pids), 'processes')\n"),
}
GOT_THROUGH = ("allocated", "connected", "wrote", SECRET, "processes")


def readable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in path.parents) and bool(path.stat().st_mode & 0o004)


@contextlib.contextmanager
def outside_places():
    """An outside folder any user could write to, and a home folder with a world-readable secret,
    both in the clone (not under /tmp, which the sandbox replaces anyway), so that only the
    sandbox stands between a program and them."""
    try:
        outside = Path(tempfile.mkdtemp(prefix=".sandbox-outside-", dir=ROOT))
        home = Path(tempfile.mkdtemp(prefix=".sandbox-home-", dir=ROOT))
    except OSError as e:
        pytest.skip(f"cannot make folders in the clone ({e})")
    try:
        outside.chmod(0o777)
        home.chmod(0o755)
        (home / "secret.txt").write_text(SECRET)
        (home / "secret.txt").chmod(0o644)
        if not readable_by_others(home / "secret.txt"):
            pytest.skip(f"{ROOT} is not reachable by other users: the write and read cases would "
                        "prove nothing about the sandbox")
        yield {"outside": str(outside), "target": str(outside / "pwned.txt"), "home": str(home),
               "secret": str(home / "secret.txt")}
    finally:
        shutil.rmtree(outside, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def isolated():
    if isolation_level() == "none":
        pytest.skip(f"no isolation on this machine: {sandbox.unavailable_reason()}")


@pytest.fixture
def places(isolated):
    with outside_places() as found:
        yield found


def session_processes(session: int) -> list[str]:
    """The processes still alive in `session` (the sandbox run's own session), as
    "pid state: command line"; zombies (dead, waiting for a parent to reap them) do not count."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, _ppid, _pgrp, sid = stat.rsplit(")", 1)[1].split()[:4]
        if int(sid) == session and state not in ("Z", "X"):
            found.append(f"{pid} {state}: {cmdline}")
    return found


def assert_contained(name: str, result: dict, places: dict, seconds: float) -> None:
    assert result["status"] in ("failed", "timeout"), (name, result)
    assert seconds < 30
    assert not any(word in result["output"] for word in GOT_THROUGH), result["output"]
    assert not os.path.exists(places["target"])
    assert os.listdir(places["outside"]) == []
    time.sleep(0.5)
    assert session_processes(result["session"]) == []


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_code_is_contained(name, places, monkeypatch):
    monkeypatch.setenv("HOME", places["home"])  # the eval's user's home: hidden from the program
    start = time.monotonic()
    result = run_program(HOSTILE[name].format(**places), timeout=5)
    assert_contained(name, result.__dict__, places, time.monotonic() - start)


def test_ordinary_code_runs_and_sees_only_its_own_folder(isolated):
    result = run_program("import os\nprint(os.getcwd(), sorted(os.listdir('.')))\n")
    assert result.passed and result.output.strip() == "/tmp/work ['program.py']"


def test_root_gets_namespaces_and_runs_code_as_nobody():
    if os.getuid() != 0:
        pytest.skip("the eval runs unprivileged here: see the user-namespace tests")
    assert isolation_level() == "namespaces"
    assert run_program("import os\nprint(os.getuid())\n").output.strip() == str(sandbox.NOBODY)


def test_root_without_an_interpreter_for_nobody_keeps_no_capabilities(places, monkeypatch):
    """Where nobody cannot execute any interpreter, the program stays root, but without a single
    capability: the remount that would make the file system writable again fails."""
    if isolation_level() != "namespaces":
        pytest.skip("the eval does not run as root here")
    python, _ = sandbox.sandbox_python()
    monkeypatch.setattr(sandbox, "sandbox_python", lambda: (python, False))
    status = run_program("import os\nprint(os.getuid(), open('/proc/self/status').read())\n")
    assert status.output.startswith("0 ") and "CapEff:\t0000000000000000" in status.output
    result = run_program(HOSTILE["remount the file system writable, then write"].format(**places), timeout=5)
    assert "Read-only file system" in result.output
    assert_contained("remount", result.__dict__, places, 0.0)


# --- as an unprivileged user -----------------------------------------------------------------

# eval/sandbox.py needs the standard library only: the unprivileged run loads it by path, with an
# interpreter that user can execute, and prints each Execution as JSON.
DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sandbox", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
sys.modules["sandbox"] = sandbox
spec.loader.exec_module(sandbox)
programs = json.loads(sys.argv[2])
results = {"level": sandbox.isolation_level(), "reason": sandbox.unavailable_reason(), "runs": {}}
for name, program in programs.items():
    if results["level"] != "none":
        results["runs"][name] = sandbox.run_program(program, timeout=5).__dict__
print(json.dumps(results))
"""


def unprivileged(command: list[str], home: str, **kw) -> subprocess.CompletedProcess:
    """`command` as the user nobody (setpriv), from /, with a minimal environment."""
    return subprocess.run(["setpriv", f"--reuid={sandbox.NOBODY}", f"--regid={sandbox.NOBODY}",
                           "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}",
                           *command], cwd="/", capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def as_nobody(tmp_path_factory):
    """Runs the hostile programs in the sandbox as nobody; skips where that cannot be done."""
    if os.getuid() != 0:
        pytest.skip("the test suite itself runs unprivileged: the other sandbox tests cover it")
    python, _ = sandbox.sandbox_python()
    probe = unprivileged(["unshare", "--user", "--map-root-user", "true"], "/")
    if probe.returncode != 0:
        pytest.skip(f"this kernel forbids unprivileged user namespaces ({probe.stderr.strip()})")
    folder = Path(tempfile.mkdtemp(prefix="megrez-sandbox-test-"))
    folder.chmod(0o755)
    shutil.copy(sandbox.__file__, folder / "sandbox.py")
    (folder / "sandbox.py").chmod(0o644)
    try:
        with outside_places() as places:
            programs = {name: program.format(**places) for name, program in HOSTILE.items()}
            programs["uid"] = "import os\nprint(os.getuid(), open('/proc/self/status').read())\n"
            start = time.monotonic()
            done = unprivileged([python, "-I", "-c", DRIVER, str(folder / "sandbox.py"),
                                 json.dumps(programs)], places["home"], timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            yield {**json.loads(done.stdout), "places": places, "seconds": time.monotonic() - start}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # every hostile program once more, as another user
def test_an_unprivileged_user_gets_user_namespaces(as_nobody):
    assert as_nobody["level"] == "user-namespaces", as_nobody["reason"]
    uid = as_nobody["runs"]["uid"]
    assert uid["status"] == "passed"
    # root of its user namespace, without a single capability, unable to regain any
    assert uid["output"].startswith("0 ")
    assert "CapEff:\t0000000000000000" in uid["output"] and "CapBnd:\t0000000000000000" in uid["output"]
    assert "NoNewPrivs:\t1" in uid["output"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_code_is_contained_for_an_unprivileged_user(as_nobody, name):
    if as_nobody["level"] == "none":
        pytest.skip(f"no isolation for an unprivileged user here: {as_nobody['reason']}")
    assert_contained(name, as_nobody["runs"][name], as_nobody["places"], as_nobody["seconds"])


# --- without isolation ---------------------------------------------------------------------------

@pytest.fixture
def no_isolation(monkeypatch):
    """As where the kernel refuses namespaces (the probe's answer, without probing)."""
    monkeypatch.setattr(sandbox, "_probe", lambda: ("none", ("namespaces: simulated refusal",)))


def test_without_isolation_generated_code_does_not_run(no_isolation, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable, match="no isolation for generated code: namespaces: "
                                                 "simulated refusal"):
        run_program(f"open({str(marker)!r}, 'w')\n")
    assert not marker.exists()


def test_without_isolation_it_runs_only_when_allowed_and_under_the_limits(no_isolation):
    result = run_program("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0])\n",
                         allow_unsandboxed=True)
    assert result.passed and result.output.strip() == str(sandbox.MEMORY_BYTES)


def test_a_code_benchmark_refuses_before_any_request(no_isolation, tmp_path, capsys):
    from eval.__main__ import main

    out = tmp_path / "run"
    # port 9 (discard) answers nothing: a request would fail differently
    with pytest.raises(SystemExit) as refused:
        main(["--benchmarks", "gsm8k,humaneval,mbpp", "--base-url", "http://127.0.0.1:9",
              "--data-dir", str(FIXTURE_MIRROR), "--out", str(out), "--no-progress"])
    assert str(refused.value) == (
        "eval: refusing to run humaneval, mbpp: no isolation for generated code here (namespaces: "
        "simulated refusal); --allow-unsandboxed-code runs it as this user, with the network on "
        "and this user's files writable")
    assert not out.exists()


def test_a_run_without_code_benchmarks_is_not_refused(no_isolation):
    from eval import BENCHMARKS
    from eval.__main__ import code_isolation

    assert code_isolation({"gsm8k": BENCHMARKS["gsm8k"]()}, allow_unsandboxed=False) is None


def test_resuming_with_another_isolation_is_refused(tmp_path):
    from eval.__main__ import check_resumable

    info = {"model": "m", "sampling": {"seed": 0}, "samples": 1, "data": "hub"}
    (tmp_path / "run.json").write_text(json.dumps({**info, "isolation": "namespaces"}))
    with pytest.raises(SystemExit, match="holds a run with different isolation \\(isolation='namespaces'\\)"):
        check_resumable(tmp_path, {**info, "isolation": "none"})
    check_resumable(tmp_path, {**info, "isolation": "namespaces"})
    later = {**info, "isolation": None}  # an invocation without code benchmarks keeps the level
    check_resumable(tmp_path, later)
    assert later["isolation"] == "namespaces"


def test_with_the_override_it_runs_warns_once_and_records_none(no_isolation, server, tmp_path, capsys):
    from eval.__main__ import main

    out = tmp_path / "unsandboxed"
    code = main(["--benchmarks", "humaneval,mbpp", "--base-url", server.url, "--api-key", API_KEY,
                 "--data-dir", str(FIXTURE_MIRROR), "--limit", "2", "--max-tokens", "24",
                 "--allow-unsandboxed-code", "--out", str(out), "--no-progress"])
    assert code == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if "WITHOUT isolation" in l]
    assert warnings == ["eval: WARNING: humaneval, mbpp: generated code runs WITHOUT isolation "
                        "(--allow-unsandboxed-code), as this user, with the network on and this "
                        "user's files writable; every record says \"isolation\": \"none\""]
    for name in ("humaneval", "mbpp"):
        records = [json.loads(l) for l in (out / f"{name}.jsonl").open()]
        assert len(records) == 2 and {r["grade"]["isolation"] for r in records} == {"none"}
    assert json.loads((out / "run.json").read_text())["isolation"] == "none"
    md = (out / "summary.md").read_text()
    assert "generated code ran WITHOUT isolation (--allow-unsandboxed-code)" in md
    assert "| humaneval | Pass@1 | 2 |" in md and md.rstrip().count("| none |") == 2


def test_the_summary_table_and_the_chart_caption_name_the_isolation(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from eval import BENCHMARKS
    from eval.report import write_summary

    captions, close = [], plt.close

    def read_caption_then_close(fig):
        captions.extend(t.get_text() for t in fig.texts)
        close(fig)

    monkeypatch.setattr(plt, "close", read_caption_then_close)
    info = {"model": "m", "samples": 1, "isolation": "user-namespaces",
            "sampling": {"constrained": True, "temperature": 0.7, "top_p": 0.9, "seed": 0}}
    results = {"gsm8k": {"score": 50.0, "n": 2}, "humaneval": {"score": 25.0, "n": 4}}
    write_summary(tmp_path, info, results, {name: BENCHMARKS[name]() for name in results})
    assert captions == ["generated code ran in the sandbox, isolation: user-namespaces"]
    md = (tmp_path / "summary.md").read_text()
    assert "| humaneval | Pass@1 | 4 | 25.0 | 74.4 | user-namespaces |" in md
    assert "| gsm8k | EM | 2 | 50.0 |" in md and md.count("| - |") == 1  # gsm8k runs no code
    assert "generated code ran in the sandbox, isolation: user-namespaces." in md
