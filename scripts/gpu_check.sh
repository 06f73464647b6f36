#!/usr/bin/env bash
# GPU check for a CUDA machine (fits a 15-minute device lease; steps, timeouts and results:
# scripts/gpu_check.py):
#   1. preflight (seconds): torch, SGLang, megrez_sglang and a CUDA device, else one line, exit 2;
#   2. topk: FlashInfer's fused_topk_deepseek, SGLang's Triton router and SGLang's TopK dispatch
#      against the reference router on the same logits (gpu_topk.json; docs/gpu-topk.md);
#   3. fidelity: SGLang with FlashInfer + CUDA graphs (bf16) against the reference model;
#   4. decode: tokens/s at the real shapes (dummy weights) next to the roofline;
#   5. with --tune-moe: SGLang's Triton fused-MoE tuning for Megrez2's expert shapes.
# A failed step is recorded and the next one still runs. Everything printed is also written to
# $OUT/gpu_check.log ($OUT when set, else bench/results), beside each step's JSON.
#
# It needs the project's environment (scripts/setup_env.sh, which needs the package registries):
# a machine without it, such as an offline GPU box, fails the preflight. It never builds the
# environment itself. Python: $MEGREZ_GPU_PYTHON, else the clone's .venv, else python3.
# Not part of CI (CI machines have no GPU). Usage: scripts/gpu_check.sh [--tune-moe] [...]
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/bench/results}
mkdir -p "$out"
python=${MEGREZ_GPU_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
export PYTHONUNBUFFERED=1
"$python" "$root/scripts/gpu_check.py" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
