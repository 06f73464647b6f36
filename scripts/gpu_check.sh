#!/usr/bin/env bash
# GPU check for a CUDA machine (well under 10 minutes, installs included when the pip cache is warm):
#   1. builds the tiny checkpoint and checks SGLang's greedy tokens against the reference model on
#      the GPU, with FlashInfer attention and CUDA graphs on (bfloat16);
#   2. loads the REAL-shape config with dummy bfloat16 weights and prints decode tokens/s at batch
#      1 and 64 and the GPU memory used.
# Not part of CI (CI machines have no GPU). Usage: scripts/gpu_check.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/run.sh" python "$root/scripts/gpu_check.py"
exec "$root/scripts/run.sh" python "$root/bench/gpu_decode.py" --batches 1,64 --backends flashinfer
