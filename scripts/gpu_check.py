"""GPU check for a CUDA machine that has the project's environment (see gpu_check.sh).

    scripts/gpu_check.sh [--steps topk,fidelity,decode] [--tune-moe --sglang-source DIR] [--budget-s 780]

Sized for a 15-minute device lease (the machine's start included). Each step runs in its own
process with its own timeout and at most one SGLang engine; a failed step is recorded and the next
one still runs:

  step        expected  timeout  what
  preflight     ~10 s     60 s   torch, SGLang and megrez_sglang importable, a CUDA device (and, for
                                 --tune-moe, ray and SGLang's tuning script); otherwise one line
                                 and exit 2, before any engine starts
  topk          ~1 min    240 s   no engine: the same random router logits and correction bias
                                 through SGLang's TopK as the model class configures it (its CUDA
                                 dispatch), FlashInfer's fused_topk_deepseek and SGLang's Triton
                                 router (moe_fused_gate) called directly, and the reference router:
                                 expert sets per token (tie-aware) and weights, per routing variant
                                 (docs/gpu-topk.md); most of it FlashInfer compiling the kernel
  fidelity     ~4 min    420 s   a head_dim-128 random checkpoint (FlashInfer needs head_dim >= 64):
                                 SGLang's bf16 greedy tokens with FlashInfer + CUDA graphs against
                                 the float32 reference model, by the tie-aware rule of the CPU tests;
                                 half of it FlashInfer compiling its kernels on first use (JIT, with
                                 the locked nvcc wheel; cached in ~/.cache/flashinfer, so the decode
                                 step, same head_dim and query/KV ratio, reuses them)
  decode       ~4 min    420 s   bench.gpu_decode: the real shapes with dummy bf16 weights,
                                 context 4096, decode CUDA graphs only: tokens/s at batch 1, 8, 64
                                 and the batch-1 roofline
  tune-moe     ~3 min    240 s   (--tune-moe) SGLang's own Triton fused-MoE tuning for E=64, N=1408
               each      each    (TP=1) and N=704 (TP=2); configs bundled into moe_configs.json

Preflight, topk, fidelity and decode take ~9 minutes on a fresh machine; with --tune-moe the whole set
does not fit one 15-minute lease: tune in a lease of its own (--tune-moe --steps none).

Results go to $OUT when it is set, else bench/results: gpu_check.log (everything printed, tee'd
by gpu_check.sh), gpu_check.json (each step's status, exit code and seconds; the topk step's
per-variant agreement), gpu_topk.json, gpu_fidelity.json, gpu_decode.json and
moe_configs.json. Install tuned configs for later runs with
``python scripts/gpu_check.py --install-moe-configs moe_configs.json DIR`` and serve with
``SGLANG_MOE_CONFIG_DIR=DIR``. Exit status: 0 when every step passed, 2 when the preflight
failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 780  # 13 minutes of a 15-minute lease; the machine's start takes the rest

# The fidelity checkpoint: the tiny preset's layers, experts and sharing groups, with the real
# head_dim (FlashInfer's kernels take head dims of 64 and more; the tiny preset's 16 fails) and the
# real query-to-KV head ratio of 4.
FIDELITY_CHECKPOINT = dict(head_dim=128, num_attention_heads=8, num_key_value_heads=2)
# SGLang in bfloat16 (FlashInfer has no float32 kernels) against the reference in float32: a
# divergence is a tie when the reference's two candidates are within two bf16 steps of logits of
# magnitude 16-32; logprobs over the common prefix within what bf16 rounding through 7 layers gives.
BF16_TIE_TOL = 0.25
BF16_LOGPROB_TOL = 0.15

# SGLang's tuning script and its search space: the full space (1,920 configs) takes ~20 minutes
# per shape, so the device run searches the block shapes that suit a 2048 x 1408 expert.
TUNING_SCRIPT = Path("benchmark/kernels/fused_moe_triton/tuning_fused_moe_triton.py")
TUNE_BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
TUNE_SEARCH_SPACE = [
    {"BLOCK_SIZE_M": m, "BLOCK_SIZE_N": n, "BLOCK_SIZE_K": k, "GROUP_SIZE_M": g, "num_warps": w,
     "num_stages": s}
    for m in (16, 32, 64, 128) for n in (64, 128) for k in (64, 128) for g in (1, 16)
    for w in (4, 8) for s in (3, 4)
]
# Megrez2's routed experts as the tuning script's architecture table reads them: DeepSeek-V2's
# entry takes n_routed_experts / num_experts_per_tok / moe_intermediate_size and adds no fused
# shared expert, so this stand-in tunes exactly E=64, N=moe_intermediate_size/TP, K=2048, top-6.
MOE_SHAPE_STANDIN = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
    "n_routed_experts": 64, "num_experts_per_tok": 6, "moe_intermediate_size": 1408,
    "n_shared_experts": 4, "intermediate_size": 10944, "num_hidden_layers": 31,
    "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 128880,
    "first_k_dense_replace": 1, "torch_dtype": "bfloat16",
}
TUNE_TP_SIZES = (1, 2)


def results_dir() -> Path:
    """$OUT when set (a device session's output folder), else bench/results."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results"


# --- running the steps -------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    command: list[str]
    expected_s: int
    timeout_s: int
    cwd: Path = ROOT
    env: dict = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # files under the results folder


@dataclass
class StepResult:
    name: str
    status: str  # passed, failed, timeout, skipped
    exit_code: int | None
    seconds: float
    expected_s: int
    timeout_s: int
    reason: str = ""
    outputs: list[str] = field(default_factory=list)


def run_step(step: Step, budget_left_s: float) -> StepResult:
    """Runs one step in its own process group; a timeout kills the whole group (engines included)."""
    timeout = min(step.timeout_s, int(budget_left_s))
    if timeout < min(step.expected_s, step.timeout_s):
        return StepResult(step.name, "skipped", None, 0.0, step.expected_s, step.timeout_s,
                          f"{int(budget_left_s)} s of the time budget left, the step needs "
                          f"~{step.expected_s} s")
    print(f"\n== {step.name}: expected ~{step.expected_s} s, timeout {timeout} s ==", flush=True)
    start = time.monotonic()
    process = subprocess.Popen(step.command, cwd=step.cwd, env={**os.environ, **step.env},
                               start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return StepResult(step.name, "timeout", None, time.monotonic() - start, step.expected_s,
                          step.timeout_s, f"killed after {timeout} s", step.outputs)
    finally:
        _kill_group(process)  # whatever the step left behind (SGLang's schedulers)
    status = "passed" if code == 0 else "failed"
    return StepResult(step.name, status, code, time.monotonic() - start, step.expected_s, step.timeout_s,
                      "" if code == 0 else f"exit status {code}", step.outputs)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def run_steps(steps: list[Step], out: Path, budget_s: float, started: float | None = None,
              preflight: StepResult | None = None) -> list[StepResult]:
    started = time.monotonic() if started is None else started
    results = [preflight] if preflight else []
    for step in steps:
        result = run_step(step, budget_s - (time.monotonic() - started))
        results.append(result)
        print(f"== {step.name}: {result.status} in {result.seconds:.0f} s"
              + (f" ({result.reason})" if result.reason else ""), flush=True)
        write_summary(out, results)
    return results


def write_summary(out: Path, results: list[StepResult]) -> Path:
    path = out / "gpu_check.json"
    record = {"benchmark": "gpu_check", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "host": platform.node(),
              "passed": all(r.status == "passed" for r in results),
              "steps": [asdict(r) for r in results]}
    topk = out / "gpu_topk.json"
    if any(r.name == "topk" for r in results) and topk.is_file():
        record["topk"] = {name: {k: v for k, v in variant.items() if k != "config"}
                          for name, variant in json.loads(topk.read_text())["variants"].items()}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


# --- preflight -----------------------------------------------------------------------------------

def find_tuning_script(sglang_source: str | None) -> Path | None:
    """SGLang's tuning script is not shipped in the wheel: a source checkout of the installed
    version (--sglang-source / $SGLANG_SOURCE), or the checkout an editable install came from."""
    candidates = [sglang_source, os.environ.get("SGLANG_SOURCE")]
    try:
        import importlib.util

        spec = importlib.util.find_spec("sglang")
        if spec and spec.origin:  # <checkout>/python/sglang/__init__.py for an editable install
            candidates.append(str(Path(spec.origin).parents[2]))
    except (ImportError, ValueError):
        pass
    for candidate in filter(None, candidates):
        script = Path(candidate) / TUNING_SCRIPT
        if script.is_file():
            return script
    return None


def preflight_problem(tune_moe: bool, sglang_source: str | None) -> str | None:
    """The first thing missing for the GPU check, in one line; None when ready."""
    setup = "build the project's environment with scripts/setup_env.sh (it needs the package registries)"
    python = sys.executable
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any failure to import means the same here
        return f"PyTorch is not importable by {python} ({type(e).__name__}: {e}); {setup}"
    try:
        import sglang
    except Exception as e:  # noqa: BLE001
        return f"SGLang is not importable by {python} ({type(e).__name__}: {e}); {setup}"
    try:
        import megrez_sglang  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"megrez_sglang is not importable by {python} ({type(e).__name__}: {e}); {setup}"
    if not torch.cuda.is_available():
        return (f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                "this check needs an NVIDIA GPU")
    if tune_moe:
        return tuning_problem(sglang_source, sglang.__version__)
    return None


def tuning_problem(sglang_source: str | None, sglang_version: str) -> str | None:
    """What --tune-moe lacks: SGLang's tuning script (not in the wheel) or ray (not locked)."""
    script = find_tuning_script(sglang_source)
    if script is None:
        return (f"--tune-moe: SGLang's tuning script ({TUNING_SCRIPT}) is not shipped in the "
                f"sglang {sglang_version} wheel; give --sglang-source DIR, a checkout of "
                f"https://github.com/sgl-project/sglang at tag v{sglang_version}")
    if "--search-space-file" not in script.read_text():
        return (f"--tune-moe: {script} has no --search-space-file; its full search does not "
                "fit a 15-minute lease (use the checkout at the installed version's tag)")
    try:
        import ray  # noqa: F401
    except ImportError:
        return ("--tune-moe: SGLang's tuning script needs ray, which is not in requirements.lock; "
                "pip install ray into the environment first")
    return None


def preflight(tune_moe: bool, sglang_source: str | None) -> int:
    """Child process: prints one line (the problem, or what was found) and exits 2 or 0."""
    problem = preflight_problem(tune_moe, sglang_source)
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr, flush=True)
        return 2
    import sglang
    import torch

    print(f"preflight: {torch.cuda.get_device_name()} ({torch.cuda.device_count()} device(s)), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, sglang {sglang.__version__}", flush=True)
    return 0


def run_preflight(args, python: str) -> StepResult:
    """The preflight in a child process (a hung import cannot hang the check), its output captured
    so that a failure is exactly one line."""
    command = [python, str(Path(__file__).resolve()), "--step", "preflight"]
    if args.tune_moe:
        command.append("--tune-moe")
    if args.sglang_source:
        command += ["--sglang-source", args.sglang_source]
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return StepResult("preflight", "timeout", None, time.monotonic() - start, 10, 60,
                          "importing torch and SGLang took over 60 s")
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    if done.returncode == 0:
        print(done.stdout.strip(), flush=True)
        return StepResult("preflight", "passed", 0, time.monotonic() - start, 10, 60)
    reason = next((line for line in reversed(lines) if line.startswith("gpu_check: ")),
                  lines[-1] if lines else f"exit status {done.returncode}")
    return StepResult("preflight", "failed", done.returncode, time.monotonic() - start, 10, 60,
                      reason.removeprefix("gpu_check: "))


# --- the topk step --------------------------------------------------------------------------------

# Routing variants of Megrez2's router (64 experts, top-6, sigmoid, correction bias): config
# overrides and the kernel SGLang 0.5.23's CUDA dispatch (biased_grouped_topk_gpu) must pick for
# them. The shipped config is not FlashInfer's: its check needs topk_group * n_group >= top_k.
TOPK_VARIANTS = {
    "shipped": ({}, "triton"),
    "n_group 4, topk_group 2, rsf 2.5": (dict(n_group=4, topk_group=2, routed_scaling_factor=2.5),
                                         "flashinfer"),
    "no renormalization, rsf 2.5": (dict(norm_topk_prob=False, routed_scaling_factor=2.5), "triton"),
}
TOPK_TOKENS = 4096
TOPK_WEIGHT_TOL = 1e-5  # float32 routing; the kernels' sigmoids differ from torch's by ~1e-7


def topk_step(json_path: Path, tokens: int = TOPK_TOKENS) -> int:
    """Child process: FlashInfer's top-k, SGLang's Triton router and SGLang's TopK dispatch against
    the reference router on the first GPU. Without CUDA (this step's own test) it needs
    TRITON_INTERPRET=1: the Triton router runs in Triton's interpreter, FlashInfer's kernel is
    replaced by FlashInfer's torch reference of it, and the record says so."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu_check: the topk step needs a CUDA device (its CPU test sets TRITON_INTERPRET=1)",
              file=sys.stderr)
        return 2
    import megrez_sglang  # noqa: F401  (before sglang)
    from bench.report import write_json
    from megrez_sglang.model.config import MegrezMoeConfig
    from megrez_sglang.model.routing_peers import compare_with_reference
    from megrez_sglang.serving.server import free_port
    from megrez_sglang.sglang_models.megrez_moe import MegrezMoeSparseBlock

    dispatched: list[str] = []  # the kernels SGLang's TopK called, in order
    from sglang.kernels.ops.moe import moe_fused_gate as triton_router
    from sglang.srt.layers.moe import topk as sglang_topk
    from sglang.test.layer_ut_utils import init_single_process_dist

    if cuda:
        from flashinfer.fused_moe import fused_topk_deepseek as flashinfer_topk

        device = "cuda"
        kernels = f"{torch.cuda.get_device_name()}: FlashInfer's and Triton's CUDA kernels"
    else:
        from flashinfer.trace.templates.sampling import _fused_topk_deepseek_reference as flashinfer_topk

        device = "cpu"
        kernels = ("CPU: Triton's interpreter; FlashInfer's torch reference in place of its kernel "
                   "(not a GPU result)")
        # SGLang's CUDA dispatch on CPU tensors, as on a CUDA host (topk.py binds these there)
        sglang_topk._is_cuda = True
        sglang_topk.fused_topk_deepseek = flashinfer_topk
        sglang_topk.biased_grouped_topk = sglang_topk.biased_grouped_topk_gpu

    def counted(kernel: str, function):
        def call(*args, **kwargs):
            dispatched.append(kernel)
            return function(*args, **kwargs)
        return call

    triton_gate = triton_router.moe_fused_gate
    triton_router.moe_fused_gate = counted("triton", triton_gate)
    if getattr(sglang_topk, "fused_topk_deepseek", None) is not None:
        sglang_topk.fused_topk_deepseek = counted("flashinfer", sglang_topk.fused_topk_deepseek)
    init_single_process_dist(master_port=free_port())

    print(f"[topk] {kernels}; {tokens} tokens of random logits per variant")
    record, passed = {}, True
    for name, (overrides, expected_kernel) in TOPK_VARIANTS.items():
        config = MegrezMoeConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                 head_dim=16, num_hidden_layers=3, n_routed_experts=64,
                                 num_experts_per_tok=6, moe_intermediate_size=32,
                                 n_shared_experts=1, **overrides)
        block = MegrezMoeSparseBlock(config, 1, None, None, "model.layers.1.mlp")
        generator = torch.Generator().manual_seed(0)
        logits = (2 * torch.randn(tokens, 64, generator=generator)).to(device)
        bias = (0.1 * torch.randn(64, generator=generator)).to(device)
        block.gate.e_score_correction_bias.data = bias  # the TopK holds this very parameter
        k = config.num_experts_per_tok
        routes = {}
        dispatched.clear()
        out = block.topk.forward_cuda(torch.zeros(tokens, 64, device=device), logits)
        routes["sglang TopK"] = (out.topk_weights, out.topk_ids)
        sglang_kernel = ",".join(dispatched) or "none"
        routes["triton moe_fused_gate"] = triton_gate(
            logits, bias, k, scoring_func="sigmoid", renormalize=config.norm_topk_prob,
            routed_scaling_factor=1.0, apply_routed_scaling_factor_on_output=False,
            num_expert_group=config.n_group, topk_group=config.topk_group)
        if config.norm_topk_prob:  # FlashInfer always renormalizes
            # one group with top-6 is outside FlashInfer's check; 4 groups, all kept, select the same
            groups = ((config.n_group, config.topk_group) if config.n_group * config.topk_group >= k
                      else (4, 4))
            weights = torch.empty(tokens, k, dtype=torch.float32, device=device)
            ids = torch.empty(tokens, k, dtype=torch.int32, device=device)
            flashinfer_topk(logits, bias, *groups, k, 1.0, weights, ids)
            routes[f"flashinfer fused_topk_deepseek (n_group {groups[0]}, topk_group {groups[1]})"] = (
                weights, ids)
        results = {}
        for route, (weights, ids) in routes.items():
            agreement = compare_with_reference(logits, bias, config, weights, ids)
            ok = agreement.agrees and agreement.max_weight_diff <= TOPK_WEIGHT_TOL
            passed &= ok
            results[route] = {**asdict(agreement), "mismatched": agreement.mismatched[:20],
                              "mismatched_tokens": len(agreement.mismatched), "passed": ok}
            print(f"[topk] {name:<34} {route:<58} sets {agreement.identical_sets}/{tokens} "
                  f"(+{agreement.tie_swaps} tie swaps), max |dw| {agreement.max_weight_diff:.2e} "
                  f"{'PASS' if ok else 'FAIL'}")
        dispatch_ok = sglang_kernel == expected_kernel
        passed &= dispatch_ok
        print(f"[topk] {name:<34} SGLang's dispatch: {sglang_kernel} (expected {expected_kernel}) "
              f"{'PASS' if dispatch_ok else 'FAIL'}")
        record[name] = {"config": overrides, "sglang_kernel": sglang_kernel,
                        "expected_kernel": expected_kernel, "routes": results,
                        "passed": dispatch_ok and all(r["passed"] for r in results.values())}
    write_json("gpu_topk", {"device": device, "kernels": kernels, "tokens": tokens,
                            "weight_tol": TOPK_WEIGHT_TOL, "passed": passed, "variants": record},
               str(json_path))
    return 0 if passed else 1


# --- the fidelity step ---------------------------------------------------------------------------

def fidelity_step(json_path: Path) -> int:
    """Child process: SGLang on CUDA (FlashInfer, CUDA graphs, bf16) against the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    import megrez_sglang  # noqa: F401  (before sglang)
    from bench.report import write_json
    from megrez_sglang.model import fidelity
    from megrez_sglang.model.build_checkpoint import build_checkpoint
    from megrez_sglang.serving.engine import start_engine

    with tempfile.TemporaryDirectory() as tmp:
        path = str(build_checkpoint(Path(tmp) / "hd128", "tiny", overrides=FIDELITY_CHECKPOINT))
        prompts = fidelity.prompt_ids(path)
        start = time.perf_counter()
        # CUDA graphs for the decode batch sizes used below (1 and 8); a bounded KV pool.
        engine = start_engine(path, dtype="bfloat16", log_level="error", cuda_graph_max_bs_decode=8,
                              max_total_tokens=65536, context_length=4096)
        engine_start_s = time.perf_counter() - start
        try:
            runs = {"one-at-a-time": fidelity.sglang_greedy(engine, prompts, batched=False),
                    "batched": fidelity.sglang_greedy(engine, prompts, batched=True)}
        finally:
            engine.shutdown()
        device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the step's own test
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        expected = fidelity.reference_greedy(path, prompts, model=model)
    record, passed = {}, True
    for mode, got in runs.items():
        comparisons = fidelity.compare_greedy(expected, got)
        problems = [p for c in comparisons for p in c.problems(BF16_LOGPROB_TOL, BF16_TIE_TOL)]
        identical = sum(c.diverged_at is None for c in comparisons)
        max_diff = max(c.max_logprob_diff for c in comparisons)
        print(f"[fidelity] {mode}: {identical}/{len(prompts)} prompts identical over {fidelity.NEW_TOKENS} "
              f"tokens; max |dlogprob| {max_diff:.4f}; {'PASS' if not problems else 'FAIL'}")
        for c in comparisons:
            if c.diverged_at is not None:
                print(f"[fidelity]   {c.describe()}")
        for p in problems:
            print(f"[fidelity]   FAIL: {p}")
        passed &= not problems
        record[mode] = {"passed": not problems, "identical_prompts": identical,
                        "max_logprob_diff": max_diff, "problems": problems,
                        "prompts": [asdict(c) for c in comparisons]}
    write_json("gpu_fidelity", {
        "checkpoint": {"preset": "tiny", **FIDELITY_CHECKPOINT}, "dtype": "bfloat16",
        "reference_dtype": "float32", "attention_backend": "flashinfer", "cuda_graphs": "decode, bs <= 8",
        "new_tokens": fidelity.NEW_TOKENS, "tie_tol": BF16_TIE_TOL, "logprob_tol": BF16_LOGPROB_TOL,
        "engine_start_s": engine_start_s, "passed": passed, "runs": record,
    }, str(json_path))
    return 0 if passed else 1


# --- MoE tuning ----------------------------------------------------------------------------------

def tuning_steps(script: Path, workdir: Path, python: str) -> list[Step]:
    """One step per tensor-parallel size: SGLang's script on the stand-in shape config, run in
    a folder of its own, where it writes E=64,N=<N>,device_name=<GPU>.json."""
    (workdir / "standin").mkdir(parents=True, exist_ok=True)
    (workdir / "standin" / "config.json").write_text(json.dumps(MOE_SHAPE_STANDIN, indent=2))
    (workdir / "search_space.json").write_text(json.dumps(TUNE_SEARCH_SPACE))
    steps = []
    for tp in TUNE_TP_SIZES:
        cwd = workdir / f"tp{tp}"
        cwd.mkdir(exist_ok=True)
        steps.append(Step(
            f"tune-moe (E=64, N={MOE_SHAPE_STANDIN['moe_intermediate_size'] // tp}, TP={tp})",
            [python, str(script), "--model", str(workdir / "standin"), "--tp-size", str(tp),
             "--dtype", "auto", "--tune", "--batch-sizes", *map(str, TUNE_BATCH_SIZES),
             "--search-space-file", str(workdir / "search_space.json")],
            expected_s=180, timeout_s=240, cwd=cwd, outputs=["moe_configs.json"],
        ))
    return steps


def bundle_moe_configs(workdir: Path, out: Path) -> Path | None:
    """The tuned configs as one JSON file (their names hold ',' and '=': kept inside it)."""
    found = sorted(workdir.glob("tp*/E=*.json"))
    if not found:
        return None
    import triton

    bundle = {"triton": triton.__version__, "configs": {p.name: json.loads(p.read_text()) for p in found}}
    path = out / "moe_configs.json"
    path.write_text(json.dumps(bundle, indent=2) + "\n")
    print(f"wrote {path}: {', '.join(bundle['configs'])}")
    return path


def install_moe_configs(bundle_path: Path, config_dir: Path) -> list[Path]:
    """Writes a moe_configs.json bundle where SGLang looks with SGLANG_MOE_CONFIG_DIR=config_dir:
    config_dir/configs/triton_<version>/<name>."""
    bundle = json.loads(bundle_path.read_text())
    target = config_dir / "configs" / f"triton_{bundle['triton'].replace('.', '_')}"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, config in bundle["configs"].items():
        if "/" in name or not name.startswith("E="):
            raise ValueError(f"{bundle_path}: {name!r} is not a fused-MoE config file name")
        (target / name).write_text(json.dumps(config, indent=4) + "\n")
        written.append(target / name)
    return written


# --- main ----------------------------------------------------------------------------------------

STEPS = ("topk", "fidelity", "decode")  # in the order they run


def check_steps(out: Path, python: str, chosen: list[str]) -> list[Step]:
    """The chosen steps after the preflight, in STEPS order."""
    script = str(Path(__file__).resolve())
    steps = [
        Step("topk", [python, script, "--step", "topk", "--json", str(out / "gpu_topk.json")],
             expected_s=60, timeout_s=240, outputs=["gpu_topk.json"]),
        Step("fidelity", [python, script, "--step", "fidelity",
                          "--json", str(out / "gpu_fidelity.json")],
             expected_s=240, timeout_s=420, outputs=["gpu_fidelity.json"]),
        Step("decode", [python, "-m", "bench.gpu_decode", "--batches", "1,8,64",
                        "--backends", "flashinfer", "--out", str(out / "gpu_decode.json")],
             expected_s=240, timeout_s=420, outputs=["gpu_decode.json"]),
    ]
    return [step for step in steps if step.name in chosen]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tune-moe", action="store_true",
                   help="also run SGLang's Triton fused-MoE tuning for E=64, N=1408 and N=704")
    p.add_argument("--sglang-source", help="a checkout of SGLang at the installed version's tag "
                   "(for its benchmark/kernels/fused_moe_triton tuning script)")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"which of {','.join(STEPS)} to run after the preflight ('none': none)")
    p.add_argument("--budget-s", type=int, default=DEFAULT_BUDGET_S,
                   help="steps that no longer fit this many seconds from the start are skipped")
    p.add_argument("--install-moe-configs", nargs=2, metavar=("BUNDLE", "DIR"),
                   help="write a moe_configs.json bundle for SGLANG_MOE_CONFIG_DIR=DIR, and exit")
    p.add_argument("--step", choices=["preflight", "topk", "fidelity"], help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=TOPK_TOKENS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    chosen = [] if args.steps == "none" else args.steps.split(",")
    if set(chosen) - set(STEPS):
        p.error(f"--steps: unknown {sorted(set(chosen) - set(STEPS))}; "
                f"choose from {', '.join(STEPS)} (or none)")

    if args.install_moe_configs:
        bundle, config_dir = map(Path, args.install_moe_configs)
        for path in install_moe_configs(bundle, config_dir):
            print(path)
        print(f"serve with SGLANG_MOE_CONFIG_DIR={config_dir.resolve()}")
        return 0
    if args.step == "preflight":
        return preflight(args.tune_moe, args.sglang_source)
    if args.step == "topk":
        return topk_step(args.json, args.tokens)
    if args.step == "fidelity":
        return fidelity_step(args.json)

    started = time.monotonic()
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    result = run_preflight(args, python)
    if result.status != "passed":
        write_summary(out, [result])
        print(f"gpu_check: {result.reason}", file=sys.stderr, flush=True)
        return 2
    steps = check_steps(out, python, chosen)
    workdir = Path(tempfile.mkdtemp(prefix="megrez-gpu-check-"))
    try:
        if args.tune_moe:
            steps += tuning_steps(find_tuning_script(args.sglang_source), workdir, python)
        results = run_steps(steps, out, args.budget_s, started, preflight=result)
        if args.tune_moe and bundle_moe_configs(workdir, out) is None:
            print("gpu_check: the MoE tuning wrote no config", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nstep                                   status    seconds  expected")
    for r in results:
        print(f"{r.name:<38} {r.status:<9} {r.seconds:7.0f}  {r.expected_s:8d}"
              + (f"  {r.reason}" if r.reason and r.status != "passed" else ""))
    print(f"wrote {write_summary(out, results)}")
    return 0 if all(r.status == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
