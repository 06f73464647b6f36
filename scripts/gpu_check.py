"""GPU fidelity check (see gpu_check.sh): SGLang on CUDA against the reference. Exits 1 on a mismatch."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import megrez_sglang  # noqa: F401  (before sglang)
import torch

from megrez_sglang.build_checkpoint import build_checkpoint
from megrez_sglang.engine import start_engine


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


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as workdir:
        return 0 if fidelity(workdir) else 1


if __name__ == "__main__":
    sys.exit(main())
