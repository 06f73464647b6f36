"""Serving throughput and latency with SGLang's own tool (sglang.benchmark.serving) against
launch_server.sh, or against several replicas behind SGLang's router: output tokens/s, time to
first token and inter-token latency at concurrency 1, 8 and 32.

    python -m bench.serving [--model PATH | --base-url URL] [--replicas K[,K...]]
                            [--policy cache_aware] [--concurrency 1,8,32]
                            [--input-len 256] [--output-len 64]

Without --base-url it serves --model (default: the `small` checkpoint) for the duration of the
run: with launch_server.sh, or with --replicas (e.g. `1,2`) once per K with
`python -m megrez_sglang.serving.cluster --replicas K` (K local workers behind sglang-router, each K in
turn, so that the rows compare K replicas on the same machine). --base-url measures a running
server or router; MEGREZ_API_KEY, when set, is sent as its bearer key. Requests: the
`random-ids` dataset (fixed lengths, nothing downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from megrez_sglang.serving.cluster import POLICIES
from megrez_sglang.serving.hardening import API_KEY_ENV
from megrez_sglang.serving.server import SERVED_MODEL_NAME, ServerProcess

from .report import print_table, write_json

METRICS = ("max_concurrency", "completed", "output_throughput", "request_throughput", "mean_ttft_ms",
           "median_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms",
           "mean_e2e_latency_ms")


def start(model: str, replicas: int | None, policy: str) -> ServerProcess:
    """launch_server.sh's server (replicas None) or a cluster of `replicas` workers; no key: a
    local run."""
    if replicas is None:
        return ServerProcess(model, env={API_KEY_ENV: ""})
    return ServerProcess(model, command=[sys.executable, "-m", "megrez_sglang.serving.cluster"],
                         args=["--replicas", str(replicas), "--policy", policy], env={API_KEY_ENV: ""})


def measure(base_url: str, tokenizer: str | None, concurrency: int, args: argparse.Namespace) -> dict:
    """One sglang.benchmark.serving run; its result record."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        command = [sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang",
                   "--base-url", base_url, "--dataset-name", "random-ids",
                   "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
                   "--random-range-ratio", "1",
                   "--num-prompts", str(max(8, args.prompts_per_concurrency * concurrency)),
                   "--max-concurrency", str(concurrency), "--output-file", out.name, "--disable-tqdm"]
        if tokenizer:
            # --model too: SGLang's tool otherwise loads the served name ("megrez-moe") from the
            # hub to look for a chat template (~25 s of retries offline); requests still name the
            # served model.
            command += ["--tokenizer", tokenizer, "--model", tokenizer,
                        "--served-model-name", SERVED_MODEL_NAME]
        env = dict(os.environ)
        if env.get(API_KEY_ENV):  # the key SGLang's tool sends, from the environment (never argv)
            env["OPENAI_API_KEY"] = env[API_KEY_ENV]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        return json.loads(Path(out.name).read_text().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--base-url", help="a running server or router to measure (nothing is started)")
    p.add_argument("--replicas", help="comma-separated worker counts: serve --model with "
                   "megrez_sglang.serving.cluster once per count (e.g. 1,2)")
    p.add_argument("--policy", choices=POLICIES, default="cache_aware", help="the router's (with --replicas)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--prompts-per-concurrency", type=int, default=2,
                   help="requests = max(8, this x concurrency)")
    p.add_argument("--out")
    args = p.parse_args()
    if args.base_url and args.replicas:
        p.error("--replicas starts its own clusters; --base-url measures a running one: choose one")
    replica_counts: list[int | None] = [None]
    if args.replicas:
        replica_counts = [int(k) for k in args.replicas.split(",")]
        if min(replica_counts) < 1:
            p.error(f"--replicas counts must be >= 1, got {args.replicas}")
    if args.model is None and args.base_url is None:
        import megrez_sglang  # noqa: F401
        from megrez_sglang.model.build_checkpoint import cached_checkpoint

        args.model = str(cached_checkpoint("small"))
    rows, records = [], []
    for replicas in replica_counts:
        server = None if args.base_url else start(args.model, replicas, args.policy)
        try:
            base_url = args.base_url or server.url
            for c in map(int, args.concurrency.split(",")):
                r = measure(base_url, args.model, c, args)
                print(f"{'' if replicas is None else f'replicas {replicas}, '}concurrency {c}: "
                      f"{r['output_throughput']:.1f} output tok/s", flush=True)
                rows.append(([] if replicas is None else [replicas]) +
                            [c, r["completed"], r["output_throughput"], r["mean_ttft_ms"],
                             r["median_ttft_ms"], r["mean_itl_ms"], r["p99_itl_ms"]])
                records.append({**({} if replicas is None else {"replicas": replicas}),
                                **{k: r[k] for k in METRICS}})
        finally:
            if server is not None:
                server.stop()
    target = "launch_server.sh" if args.replicas is None else f"megrez_sglang.serving.cluster ({args.policy})"
    print_table(f"sglang.benchmark.serving against {target} ({args.model or args.base_url}; "
                f"{args.input_len} in / {args.output_len} out tokens)",
                ([] if args.replicas is None else ["replicas"]) +
                ["concurrency", "requests", "output tok/s", "mean TTFT ms", "median TTFT ms",
                 "mean ITL ms", "p99 ITL ms"], rows)
    name = "serving" if args.replicas is None else "serving_replicas"
    write_json(name, {"model": args.model, "base_url": args.base_url, "policy": args.policy if args.replicas
                      else None, "input_len": args.input_len, "output_len": args.output_len,
                      "results": records}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
