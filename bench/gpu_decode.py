"""GPU decode speed at the real shapes next to the roofline, FlashInfer against Triton attention.
Sized for a 15-minute device lease including start-up (no downloads: dummy weights).

    python -m bench.gpu_decode [--batches 1,8,64] [--new-tokens 128] [--backends flashinfer,triton]

The real-shape config (build_checkpoint --preset real-config) with SGLang's dummy bf16 weights
(load_format="dummy"), one engine per attention backend, each with a 4096-token context (the KV
pool and its start-up sized for the measurement, not for 32K prompts) and CUDA graphs for the
measured decode batch sizes only (prefill graphs off: only decode is measured). Expected: about
1.5 minutes of engine start and 30 s of measurement per backend. Roofline for batch-1 decode: the
bytes of the weights one token reads (the activated parameters x 2: attention, dense MLP, router,
shared experts, 6 of 64 experts per layer, lm_head; the embedding is one row) divided by a
device-to-device copy bandwidth measured in the same run. Target: batch-1 decode >= 60 % of the
roofline. Needs CUDA.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import megrez_sglang  # noqa: F401  (configures SGLang for this host)
from megrez_sglang.model.build_checkpoint import build_checkpoint
from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.model.param_count import count_parameters
from megrez_sglang.serving.engine import start_engine

from .report import print_table, write_json


def copy_bandwidth_gb_s(gib: float = 2.0, repeats: int = 20) -> float:
    """Device-to-device copy: bytes read + bytes written per second."""
    n = int(gib * (1 << 30)) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 2 * repeats / elapsed / 1e9


def gpu_memory_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def decode_rate(engine, batch: int, new_tokens: int) -> float:
    prompts = [[1000 + 7 * i + j for j in range(16)] for i in range(batch)]
    params = {"temperature": 0.0, "ignore_eos": True}
    engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": 8})  # warm-up
    start = time.perf_counter()
    engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": 1})
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": new_tokens})
    return batch * (new_tokens - 1) / (time.perf_counter() - start - prefill)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--backends", default="flashinfer,triton")
    p.add_argument("--out")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_decode: needs a CUDA device", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    config = MegrezMoeConfig()
    active_bytes = (count_parameters(config).activated + config.hidden_size) * 2
    bandwidth = copy_bandwidth_gb_s()
    roofline = bandwidth * 1e9 / active_bytes
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth:.0f} GB/s; "
          f"{active_bytes / 1e9:.2f} GB of weights per decoded token -> "
          f"roofline {roofline:.0f} tokens/s at batch 1")
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_checkpoint(Path(tmp) / "real", "real-config"))
        for backend in args.backends.split(","):
            before = gpu_memory_used_mib()
            engine = start_engine(model, load_format="dummy", dtype="bfloat16", log_level="error",
                                  attention_backend=backend, mem_fraction_static=0.8,
                                  context_length=4096, cuda_graph_bs_decode=batches,
                                  disable_prefill_cuda_graph=True)
            try:
                memory = gpu_memory_used_mib() - before
                print(f"[{backend}] GPU memory used by the engine (weights, KV cache, graphs): {memory} MiB")
                for batch in batches:
                    tps = decode_rate(engine, batch, args.new_tokens)
                    per_seq = tps / batch
                    rows.append([backend, batch, tps, per_seq, 100 * per_seq / roofline])
                    records.append({"attention_backend": backend, "batch": batch, "tokens_per_s": tps,
                                    "engine_gpu_memory_mib": memory,
                                    "steps_per_s": per_seq,
                                    "percent_of_batch1_roofline": 100 * per_seq / roofline})
            finally:
                engine.shutdown()
    print_table("Decode at the real shapes, dummy bf16 weights", ["attention", "batch", "tokens/s",
                "steps/s", "% of batch-1 roofline (steps)"], rows)
    write_json("gpu_decode", {"copy_bandwidth_gb_s": bandwidth, "active_weight_bytes_per_token": active_bytes,
                              "roofline_tokens_per_s_batch1": roofline, "results": records}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
