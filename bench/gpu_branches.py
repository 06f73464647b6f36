"""The model along SGLang's GPU branches on the CPU (megrez_sglang.model.gpu_branches: Triton kernels in
Triton's interpreter) against the float32 reference: configs x dtypes x tensor parallelism.

    python -m bench.gpu_branches [--configs shipped,rsf2.5,group2,unnormalised] [--dtypes float32,float16]
                                 [--tp 1,2] [--prompts 4] [--new-tokens 8]

The trained tiny checkpoint and copies of it with routing fields changed (each must change the
reference's own greedy tokens, or it checks nothing: the "ref changed" column). Per row: greedy
tokens equal to the reference (the suite's tie rule: a divergence only at a near-tie of the
reference's logits), max |dlogprob| before any divergence, engine start and seconds a forward
(the batched generate over --new-tokens forwards), with the machine's load beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import megrez_sglang  # noqa: F401  (configures SGLang for this host)
from megrez_sglang.model import gpu_branches
from megrez_sglang.model.fidelity import compare_greedy, prompt_ids, reference_greedy, sglang_greedy
from megrez_sglang.model.model_path import TRAINED_CHECKPOINT

from .report import print_table, write_json

CONFIGS = {
    "shipped": {},
    "rsf2.5": dict(routed_scaling_factor=2.5),
    "group2": dict(n_group=2, topk_group=1),
    "unnormalised": dict(norm_topk_prob=False),
}
TIE_TOL = {"float32": 1e-3, "float16": 3e-2}
GPU_PATH = {"fused_experts_impl", "moe_fused_gate", "extend_attention_fwd", "decode_attention_fwd"}


def config_copy(root: Path, name: str, fields: dict) -> str:
    if not fields:
        return str(TRAINED_CHECKPOINT)
    path = root / name
    shutil.copytree(TRAINED_CHECKPOINT, path)
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return str(path)


def run_row(path: str, dtype: str, tp: int, prompts, reference, new_tokens: int) -> dict:
    from megrez_sglang.serving.engine import raise_engine_start_error, start_engine

    trace = Path(tempfile.mkdtemp()) / "trace.txt"
    os.environ[gpu_branches.TRACE_ENV] = str(trace)
    start = time.perf_counter()
    with gpu_branches.enabled(dtype):
        engine = start_engine(path, dtype=dtype, tp_size=tp, log_level="error",
                              custom_sigquit_handler=raise_engine_start_error, **gpu_branches.ENGINE_ARGS)
    started = time.perf_counter() - start
    try:
        sglang_greedy(engine, prompts[:1], batched=True, new_tokens=1)  # first-call set-up
        start = time.perf_counter()
        got = sglang_greedy(engine, prompts, batched=True, new_tokens=new_tokens)
        per_forward = (time.perf_counter() - start) / new_tokens
    finally:
        engine.shutdown()
        del os.environ[gpu_branches.TRACE_ENV]
    ran: dict[str, set[str]] = {}
    for line in trace.read_text().splitlines() if trace.exists() else []:
        pid, name = line.split(" ", 1)
        ran.setdefault(pid, set()).add(name)
    comparisons = compare_greedy(reference, got)
    equal = sum(c.tokens if c.diverged_at is None else c.diverged_at for c in comparisons)
    ties = [c for c in comparisons if c.diverged_at is not None and c.logit_gap <= TIE_TOL[dtype]]
    failed = [c for c in comparisons if c.diverged_at is not None and c.logit_gap > TIE_TOL[dtype]]
    return dict(tokens_equal=equal, tokens=sum(c.tokens for c in comparisons),
                max_dlogprob=max(c.max_logprob_diff for c in comparisons),
                divergences_at_ties=len(ties), divergences=len(failed),
                start_s=started, s_per_forward=per_forward, load=os.getloadavg()[0],
                # processes (the tp schedulers) where the fused-MoE kernel, the Triton router and
                # the Triton attention kernels ran
                gpu_path_processes=sum(GPU_PATH <= names for names in ran.values()),
                details=[c.describe() for c in comparisons])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--tp", default="1,2")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--out")
    args = p.parse_args()
    prompts = prompt_ids(str(TRAINED_CHECKPOINT))[: args.prompts]
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        shipped = reference_greedy(str(TRAINED_CHECKPOINT), prompts, new_tokens=args.new_tokens)
        for name in args.configs.split(","):
            path = config_copy(Path(tmp), name, CONFIGS[name])
            reference = reference_greedy(path, prompts, new_tokens=args.new_tokens)
            changed = sum(r.tokens != s.tokens for r, s in zip(reference, shipped, strict=True))
            for dtype in args.dtypes.split(","):
                for tp in map(int, args.tp.split(",")):
                    try:
                        result = run_row(path, dtype, tp, prompts, reference, args.new_tokens)
                    except Exception as e:  # noqa: BLE001 - a row that cannot run says why
                        result = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
                    records.append(dict(config=name, fields=CONFIGS[name], dtype=dtype, tp=tp,
                                        reference_changed=changed, **result))
                    print(json.dumps(records[-1], ensure_ascii=False), file=sys.stderr, flush=True)
                    rows.append([name, dtype, tp, f"{changed}/{len(prompts)}"] + (
                        [f"{result['tokens_equal']}/{result['tokens']}", f"{result['max_dlogprob']:.2e}",
                         result["divergences_at_ties"], result["start_s"], result["s_per_forward"],
                         result["load"], result["gpu_path_processes"]]
                        if "error" not in result else [result["error"], "", "", "", "", "", ""]))
    print_table("GPU branches on the CPU (Triton interpreter) vs the float32 reference",
                ["config", "dtype", "tp", "ref changed", "tokens equal", "max |dlogprob|", "ties",
                 "start s", "s/forward", "load", "GPU-path procs"], rows)
    write_json("gpu_branches", {"prompts": args.prompts, "new_tokens": args.new_tokens,
                                "rows": records}, args.out)
    return 0 if all("error" not in r and r["divergences"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
