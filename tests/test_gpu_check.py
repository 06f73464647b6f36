"""scripts/gpu_check.sh on a machine without a GPU: the preflight refuses in seconds with one line
before any engine starts, results land under $OUT, and a failed step never stops the next one."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up
spec.loader.exec_module(gpu_check)


def run_check(out: Path, *args, pythonpath: Path | None = None):
    env = {**os.environ, "OUT": str(out), "MEGREZ_GPU_PYTHON": sys.executable}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    start = time.monotonic()
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=120)
    return done, time.monotonic() - start


def broken_module(tmp_path: Path, name: str) -> Path:
    """A folder to put first on PYTHONPATH where importing `name` fails."""
    folder = tmp_path / f"broken-{name}"
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(f"raise ImportError('{name} simulated as missing')\n")
    return folder


@pytest.mark.slow  # imports torch, SGLang and the package in a child process (~25 s here)
@pytest.mark.skipif(torch.cuda.is_available(), reason="a test for hosts without a GPU")
def test_without_cuda_the_preflight_fails_in_seconds_with_one_line(tmp_path):
    out = tmp_path / "out"
    done, seconds = run_check(out)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device: torch ")
    assert seconds < 60
    # the log and the summary land in $OUT, nothing else: no step, no engine ran
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert (out / "gpu_check.log").read_text().splitlines() == lines
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["passed"] is False
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [("preflight", "failed")]
    assert summary["steps"][0]["reason"] == lines[0].removeprefix("gpu_check: ")


@pytest.mark.parametrize("module, names", [
    pytest.param("sglang", "SGLang", marks=pytest.mark.slow),  # imports torch first
    ("torch", "PyTorch"),
])
def test_a_missing_package_is_named_with_how_to_get_it(tmp_path, module, names):
    done, _ = run_check(tmp_path / "out", pythonpath=broken_module(tmp_path, module))
    assert done.returncode == 2
    [line] = (done.stdout + done.stderr).splitlines()
    assert line.startswith(f"gpu_check: {names} is not importable by {sys.executable} "
                           f"(ImportError: {module} simulated as missing); build the project's "
                           "environment with scripts/setup_env.sh")


def test_results_go_to_out_when_set_else_bench_results(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.results_dir() == tmp_path
    monkeypatch.delenv("OUT")
    assert gpu_check.results_dir() == ROOT / "bench" / "results"


def step(name, code, **kw):
    return gpu_check.Step(name, [sys.executable, "-c", code], expected_s=kw.pop("expected_s", 1),
                          timeout_s=kw.pop("timeout_s", 30), **kw)


def test_a_failed_or_hung_step_is_recorded_and_the_next_still_runs(tmp_path):
    spawned, survived = tmp_path / "orphan-started", tmp_path / "orphan-survived"
    # the hung step leaves a process of its own behind, as an SGLang scheduler would
    orphan = (f"import time, pathlib; pathlib.Path({str(spawned)!r}).touch(); time.sleep(3); "
              f"pathlib.Path({str(survived)!r}).touch()")
    hang = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {orphan!r}]); "
            "time.sleep(60)")
    steps = [step("fails", "import sys; sys.exit(3)"), step("hangs", hang, timeout_s=2),
             step("passes", "print('ok')")]
    results = gpu_check.run_steps(steps, tmp_path, budget_s=100)
    assert [(r.name, r.status, r.exit_code) for r in results] == [
        ("fails", "failed", 3), ("hangs", "timeout", None), ("passes", "passed", 0)]
    assert results[1].reason == "killed after 2 s"
    assert spawned.exists()
    time.sleep(3.5)
    assert not survived.exists()  # the timeout killed the step's whole process group
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["failed", "timeout", "passed"]
    assert summary["passed"] is False


def test_steps_that_no_longer_fit_the_time_budget_are_skipped(tmp_path):
    steps = [step("first", "pass", expected_s=1, timeout_s=10),
             step("next", "pass", expected_s=60, timeout_s=120)]
    results = gpu_check.run_steps(steps, tmp_path, budget_s=30)
    assert [r.status for r in results] == ["passed", "skipped"]
    assert "of the time budget left, the step needs ~60 s" in results[1].reason


def test_tune_moe_names_what_it_lacks(tmp_path, monkeypatch):
    monkeypatch.delenv("SGLANG_SOURCE", raising=False)
    assert "is not shipped in the sglang 0.5.23 wheel; give --sglang-source DIR, a checkout of " \
           "https://github.com/sgl-project/sglang at tag v0.5.23" in gpu_check.tuning_problem(None, "0.5.23")
    script = tmp_path / gpu_check.TUNING_SCRIPT
    script.parent.mkdir(parents=True)
    script.write_text("parser.add_argument('--tune')\n")
    assert "has no --search-space-file" in gpu_check.tuning_problem(str(tmp_path), "0.5.23")
    script.write_text("parser.add_argument('--search-space-file')\n")
    problem = gpu_check.tuning_problem(str(tmp_path), "0.5.23")
    if importlib.util.find_spec("ray") is None:
        assert problem.endswith("needs ray, which is not in requirements.lock; pip install ray into "
                                "the environment first")
    else:
        assert problem is None


def test_the_tuning_shape_stand_in_carries_megrez2s_expert_shapes():
    """SGLang's tuning script reads DeepSeek-V2 configs' expert fields; the stand-in holds the
    real model's values, and transformers parses it (as SGLang's get_config will)."""
    from transformers import AutoConfig

    from megrez_sglang.model.config import MegrezMoeConfig

    standin = AutoConfig.for_model(**gpu_check.MOE_SHAPE_STANDIN)
    real = MegrezMoeConfig()
    for field in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "hidden_size"):
        assert getattr(standin, field) == getattr(real, field), field


def test_the_tuning_runs_sglangs_script_once_per_tensor_parallel_size(tmp_path):
    steps = gpu_check.tuning_steps(Path("/checkout") / gpu_check.TUNING_SCRIPT, tmp_path, "python")
    assert [s.name for s in steps] == ["tune-moe (E=64, N=1408, TP=1)", "tune-moe (E=64, N=704, TP=2)"]
    command = steps[1].command
    assert command[:2] == ["python", str(Path("/checkout") / gpu_check.TUNING_SCRIPT)]
    assert command[command.index("--tp-size") + 1] == "2" and "--tune" in command
    assert command[command.index("--model") + 1] == str(tmp_path / "standin")
    assert json.loads((tmp_path / "standin" / "config.json").read_text()) == gpu_check.MOE_SHAPE_STANDIN
    assert len(json.loads((tmp_path / "search_space.json").read_text())) == 128
    assert steps[0].cwd != steps[1].cwd  # each writes its E=64,N=...json into a folder of its own


def test_tuned_configs_install_where_sglang_reads_them(sglang_world, tmp_path, monkeypatch):
    import triton
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config as sglang_moe_configs

    tuned = {"1": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1,
                   "num_warps": 4, "num_stages": 3}}
    bundle = tmp_path / "moe_configs.json"
    bundle.write_text(json.dumps({"triton": triton.__version__,
                                  "configs": {"E=64,N=1408,device_name=NVIDIA_H200.json": tuned}}))
    [path] = gpu_check.install_moe_configs(bundle, tmp_path / "moe")
    assert path.parent.name == f"triton_{triton.__version__.replace('.', '_')}"
    monkeypatch.setenv("SGLANG_MOE_CONFIG_DIR", str(tmp_path / "moe"))
    monkeypatch.setattr(sglang_moe_configs, "get_device_name", lambda *a: "NVIDIA H200")
    sglang_moe_configs.get_moe_configs.cache_clear()
    try:
        assert sglang_moe_configs.get_moe_configs(64, 1408, None) == {1: tuned["1"]}
    finally:
        sglang_moe_configs.get_moe_configs.cache_clear()


def test_the_topk_step_runs_first_and_each_step_only_when_chosen(tmp_path):
    steps = gpu_check.check_steps(tmp_path, "python", ["decode", "topk"])
    assert [s.name for s in steps] == ["topk", "decode"]
    assert steps[0].command[1:] == [str(ROOT / "scripts" / "gpu_check.py"), "--step", "topk",
                                    "--json", str(tmp_path / "gpu_topk.json")]
    assert (steps[0].expected_s, steps[0].timeout_s) == (60, 240)
    assert [s.name for s in gpu_check.check_steps(tmp_path, "python", list(gpu_check.STEPS))] == \
        ["topk", "fidelity", "decode"]


def test_an_unknown_step_is_named_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--steps", "topk,routing"])
    assert "--steps: unknown ['routing']; choose from topk, fidelity, decode (or none)" in \
        capsys.readouterr().err


def test_the_summary_carries_the_topk_steps_agreement(tmp_path):
    variant = {"config": {}, "sglang_kernel": "triton", "expected_kernel": "triton", "routes": {},
               "passed": True}
    (tmp_path / "gpu_topk.json").write_text(json.dumps({"variants": {"shipped": variant}}))
    result = gpu_check.StepResult("topk", "passed", 0, 30.0, 60, 240)
    summary = json.loads(gpu_check.write_summary(tmp_path, [result]).read_text())
    assert summary["topk"] == {"shipped": {"sglang_kernel": "triton", "expected_kernel": "triton",
                                           "routes": {}, "passed": True}}


@pytest.mark.slow  # a child process importing SGLang, Triton's interpreter (~40 s here)
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run of the step; a GPU runs it for real")
def test_the_topk_step_on_the_cpu_runs_sglangs_cuda_dispatch_and_the_triton_router(tmp_path):
    """The step's code up to the CUDA kernels: SGLang's CUDA dispatch picks the expected kernel for
    each variant, and the Triton router (in Triton's interpreter) and FlashInfer's torch reference
    (in place of its kernel) select the reference's experts with its weights."""
    out = tmp_path / "gpu_topk.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--step", "topk",
                           "--json", str(out), "--tokens", "64"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and "not a GPU result" in record["kernels"]
    assert record["passed"] is True
    variants = record["variants"]
    assert {name: v["sglang_kernel"] for name, v in variants.items()} == {
        "shipped": "triton", "n_group 4, topk_group 2, rsf 2.5": "flashinfer",
        "no renormalization, rsf 2.5": "triton"}
    for name, variant in variants.items():
        routes = variant["routes"]
        assert {"sglang TopK", "triton moe_fused_gate"} <= set(routes), name
        assert any(r.startswith("flashinfer") for r in routes) == (name != "no renormalization, rsf 2.5")
        for route in routes.values():
            assert route["identical_sets"] == 64 and route["max_weight_diff"] < 1e-6, (name, route)


@pytest.mark.slow  # a child process importing torch (~5 s here)
@pytest.mark.skipif(torch.cuda.is_available(), reason="a test for hosts without a GPU")
def test_without_cuda_or_the_interpreter_the_topk_step_refuses_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--step", "topk",
                           "--json", str(tmp_path / "t.json")], capture_output=True, text=True,
                          cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "gpu_check: the topk step needs a CUDA device (its CPU test sets TRITON_INTERPRET=1)")
