#!/usr/bin/env bash
# Serve Megrez2 with SGLang's HTTP server (OpenAI-compatible API at /v1, native /generate).
#
#   ./launch_server.sh [MODEL_PATH] [--host 127.0.0.1] [--port 30000] [--tp N] [--dp N]
#                      [--nnodes N --node-rank R --dist-init-addr HOST:PORT]
#                      [--served-model-name megrez-moe] [--shutdown-timeout 30] [-- extra SGLang flags]
#
# Listens on 127.0.0.1 unless --host says otherwise; requires "Authorization: Bearer $MEGREZ_API_KEY"
# when MEGREZ_API_KEY is set, and $MEGREZ_ADMIN_API_KEY for the control endpoints (403 without it);
# keys travel in the environment, never on the command line. FlashInfer attention on CUDA,
# torch-native on CPU. --dp N: N replicas inside the server (N x --tp GPUs), requests balanced by
# SGLang; --nnodes: one model over several machines (README, "Serving"). Prints the URL once the
# server is healthy; exits 2 with a message when the
# model path does not exist, a key is misconfigured or the port is taken. SIGTERM / Ctrl-C: the
# requests in flight finish, every process stops, exit 0. A crashed server or worker: every
# process stops, exit 1 with a one-line reason. Without MODEL_PATH it serves the project's trained
# tiny checkpoint (megrez_sglang/checkpoints/tiny-trained).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$root/scripts/run.sh" python -m megrez_sglang.serving.server "$@"
