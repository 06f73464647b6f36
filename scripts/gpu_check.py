"""The GPU half of the model checks (see gpu_check.sh). Prints a report; exits 1 on a mismatch."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import megrez_sglang  # noqa: F401  (before sglang)
import torch

from megrez_sglang.build_checkpoint import build_checkpoint
from megrez_sglang.engine import start_engine


def gpu_memory_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def fidelity(workdir: str) -> bool:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fidelity import prompt_ids, reference_greedy, sglang_greedy

    path = str(build_checkpoint(f"{workdir}/tiny", "tiny"))
    prompts = prompt_ids(path)
    engine = start_engine(path, log_level="error")  # flashinfer, CUDA graphs on, bfloat16
    try:
        got = sglang_greedy(engine, prompts, batched=True)
    finally:
        engine.shutdown()
    from transformers import AutoModelForCausalLM

    ref_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    expected = reference_greedy(path, prompts, model=ref_model)
    same = [t for t, _ in got] == [r.tokens for r in expected]
    diff = max(abs(a - b) for r, (_, lp) in zip(expected, got) for a, b in zip(r.logprobs, lp))
    print(f"[fidelity] tiny checkpoint, bf16, flashinfer + CUDA graphs: greedy tokens "
          f"{'MATCH' if same else 'DIFFER'} on {len(prompts)} prompts x 32; max |dlogprob| {diff:.4f}")
    return same


def decode_throughput(workdir: str, batches: list[int], new_tokens: int) -> None:
    path = str(build_checkpoint(f"{workdir}/real", "real-config"))
    before = gpu_memory_used_mib()
    engine = start_engine(path, load_format="dummy", dtype="bfloat16", log_level="error",
                          mem_fraction_static=0.8)
    try:
        print(f"[real shapes, dummy bf16] GPU memory used by the engine: {gpu_memory_used_mib() - before} MiB")
        for batch in batches:
            prompts = [[100 + i, 200 + i, 300 + i, 400 + i] for i in range(batch)]
            params = {"temperature": 0.0, "max_new_tokens": new_tokens, "ignore_eos": True}
            engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": 8})  # warm-up
            short = time.perf_counter()
            engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": 1})
            prefill = time.perf_counter() - short
            start = time.perf_counter()
            engine.generate(input_ids=prompts, sampling_params=params)
            elapsed = time.perf_counter() - start - prefill
            print(f"[real shapes, dummy bf16] batch {batch:>3}: decode {batch * (new_tokens - 1) / elapsed:9.1f} "
                  f"tokens/s ({(new_tokens - 1) / elapsed:7.1f} steps/s)")
    finally:
        engine.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", default="1,64")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as workdir:
        ok = fidelity(workdir)
        decode_throughput(workdir, [int(b) for b in args.batches.split(",")], args.new_tokens)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
