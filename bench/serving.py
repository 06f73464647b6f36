"""Serving throughput and latency with SGLang's own tool (sglang.benchmark.serving) against
launch_server.sh: output tokens/s, time to first token and inter-token latency at concurrency
1, 8 and 32.

    python -m bench.serving [--model PATH | --base-url URL] [--concurrency 1,8,32]
                            [--input-len 256] [--output-len 64]

Without --base-url it serves --model (default: the `small` checkpoint) with launch_server.sh for
the duration of the run. Requests: the `random-ids` dataset (fixed lengths, nothing downloaded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from megrez_sglang.server import ServerProcess

from .report import print_table, write_json


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--base-url")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--prompts-per-concurrency", type=int, default=2,
                   help="requests = max(8, this x concurrency)")
    p.add_argument("--out")
    args = p.parse_args()
    if args.model is None and args.base_url is None:
        import megrez_sglang  # noqa: F401
        from megrez_sglang.build_checkpoint import cached_checkpoint

        args.model = str(cached_checkpoint("small"))
    server = None
    if args.base_url is None:
        server = ServerProcess(args.model, env={"MEGREZ_API_KEY": ""})  # no key: a local run
        args.base_url = server.url
    rows, records = [], []
    try:
        for c in map(int, args.concurrency.split(",")):
            with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
                command = [sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang",
                           "--base-url", args.base_url, "--dataset-name", "random-ids",
                           "--random-input-len", str(args.input_len), "--random-output-len",
                           str(args.output_len), "--random-range-ratio", "1",
                           "--num-prompts", str(max(8, args.prompts_per_concurrency * c)),
                           "--max-concurrency", str(c), "--output-file", out.name, "--disable-tqdm"]
                if args.model:
                    command += ["--tokenizer", args.model]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                r = json.loads(Path(out.name).read_text().splitlines()[-1])
            rows.append([c, r["completed"], r["output_throughput"], r["mean_ttft_ms"],
                         r["median_ttft_ms"], r["mean_itl_ms"], r["p99_itl_ms"]])
            records.append({k: r[k] for k in ("max_concurrency", "completed", "output_throughput",
                                              "request_throughput", "mean_ttft_ms", "median_ttft_ms",
                                              "p99_ttft_ms", "mean_itl_ms", "median_itl_ms",
                                              "p99_itl_ms", "mean_e2e_latency_ms")})
    finally:
        if server is not None:
            server.stop()
    print_table(f"sglang.benchmark.serving against launch_server.sh ({args.model or args.base_url}; "
                f"{args.input_len} in / {args.output_len} out tokens)",
                ["concurrency", "requests", "output tok/s", "mean TTFT ms", "median TTFT ms",
                 "mean ITL ms", "p99 ITL ms"], rows)
    write_json("serving", {"model": args.model, "base_url": args.base_url, "input_len": args.input_len,
                           "output_len": args.output_len, "results": records}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
