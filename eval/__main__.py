"""Evaluate Megrez2 on the model card's benchmarks.

    python -m eval --benchmarks gsm8k,math500,ceval,mmlu_pro,ifeval,humaneval,mbpp
                   (--base-url URL | --model PATH) --out RUN_DIR
                   [--limit N] [--data-dir DIR | --from-hub] [--samples K]
                   [--constrained | --free] [--concurrency N] [--seed S]
                   [--allow-unsandboxed-code]

Against a running server (--base-url, e.g. launch_server.sh; the openai client, concurrent
requests) or a server this command starts for --model (sgl.Runtime). The items come from the
Hugging Face hub (through `datasets` and its cache) unless --data-dir or MEGREZ_EVAL_DATA names a
local mirror (layout: eval/README.md). Per benchmark, RUN_DIR gets
<name>.jsonl (one line per item, written as it finishes: prompt, output, extracted answer,
correct, tokens, latency); rerunning the same command resumes where it stopped. Then
summary.json, summary.md (beside the card's figures) and summary.png; run.json records the
sampling parameters, seed, model, versions and the isolation generated code ran under.

HumanEval and MBPP execute the model's code in eval.sandbox. Where no isolation is available
they refuse to start, before any request, unless --allow-unsandboxed-code says to run the code
as the eval's user, with the network on (then a warning, and "isolation": "none" in every record).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from megrez_sglang.model.provenance import git_revision, package_versions

from . import BENCHMARKS, CARD_BENCHMARKS
from .benchmark import DATA_DIR_ENV, BenchmarkDataError, data_dir_from_env
from .code import CodeBenchmark
from .report import write_summary
from .runner import load_records, records_path, run_benchmark
from .sampler import SamplingConfig, ServerSampler
from .sandbox import isolation_level, unavailable_reason

SETTINGS_THAT_MUST_MATCH = ("model", "sampling", "samples", "data", "isolation")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmarks", default=",".join(CARD_BENCHMARKS),
                   help=f"comma-separated, from {', '.join(BENCHMARKS)} (default: the card's "
                   f"{', '.join(CARD_BENCHMARKS)})")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--base-url", help="a running SGLang server, e.g. http://127.0.0.1:30000")
    target.add_argument("--model", help="a checkpoint: start a server for it in-process")
    p.add_argument("--api-key", default=os.environ.get("MEGREZ_API_KEY"))
    p.add_argument("--out", required=True, type=Path, help="the run directory (resumed if it exists)")
    p.add_argument("--limit", type=int, help="only the first N items of each benchmark")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=Path, default=data_dir_from_env(),
                        help=f"a local mirror of the benchmarks (default: ${DATA_DIR_ENV}; "
                        "unset: the Hugging Face hub)")
    source.add_argument("--from-hub", action="store_true",
                        help=f"load from the Hugging Face hub even when {DATA_DIR_ENV} is set")
    p.add_argument("--samples", type=int, default=1, help="samples per item (majority vote for "
                   "math and choice, mean for IFEval, pass@1 for code)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--constrained", dest="constrained", action="store_true", default=True,
                      help="enforce the card's output formats with grammars (default)")
    mode.add_argument("--free", dest="constrained", action="store_false",
                      help="plain generation; answers are read out of the text")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, help="per reply (default: the benchmark's)")
    p.add_argument("--reasoning-max-tokens", type=int, help="math, constrained: reasoning budget")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-unsandboxed-code", action="store_true",
                   help="run HumanEval/MBPP code even where no isolation is available (as this "
                   "user, network on); by default they refuse")
    args = p.parse_args(argv)
    unknown = [b for b in args.benchmarks.split(",") if b not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.samples < 1 or args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        p.error("--samples, --concurrency and --limit must be >= 1")
    return args


def code_isolation(benchmarks: dict, allow_unsandboxed: bool) -> str | None:
    """The isolation the selected code benchmarks will run generated code under (None: none of
    them is selected). Without any isolation they refuse, unless allowed: then a warning, once."""
    code = [b for b in benchmarks.values() if isinstance(b, CodeBenchmark)]
    if not code:
        return None
    level = isolation_level()
    if level == "none":
        names = ", ".join(b.name for b in code)
        risk = "as this user, with the network on and this user's files writable"
        if not allow_unsandboxed:
            raise SystemExit(f"eval: refusing to run {names}: no isolation for generated code here "
                             f"({unavailable_reason()}); --allow-unsandboxed-code runs it {risk}")
        print(f"eval: WARNING: {names}: generated code runs WITHOUT isolation "
              f"(--allow-unsandboxed-code), {risk}; every record says \"isolation\": \"none\"",
              file=sys.stderr, flush=True)
        for bench in code:
            bench.allow_unsandboxed = True
    return level


def check_resumable(run_dir: Path, info: dict) -> None:
    """A run directory resumes only with the settings it was started with (generated code's
    isolation: where both invocations ran code benchmarks)."""
    path = run_dir / "run.json"
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    if info.get("isolation") is None or previous.get("isolation") is None:
        info["isolation"] = info.get("isolation") or previous.get("isolation")
        previous["isolation"] = info["isolation"]
    changed = [k for k in SETTINGS_THAT_MUST_MATCH if previous.get(k) != info.get(k)]
    if changed:
        raise SystemExit(f"eval: {run_dir} holds a run with different {', '.join(changed)} "
                         f"({', '.join(f'{k}={previous.get(k)!r}' for k in changed)}); "
                         "use another --out to start a new run")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = SamplingConfig(args.temperature, args.top_p, args.seed, args.constrained,
                            args.max_tokens, args.reasoning_max_tokens)
    names = args.benchmarks.split(",")
    benchmarks = {n: BENCHMARKS[n]() for n in names}
    isolation = code_isolation(benchmarks, args.allow_unsandboxed_code)  # before any request
    items = {}
    data_dir = None if args.from_hub else args.data_dir
    for name, bench in benchmarks.items():
        try:
            loaded = bench.items(data_dir)
        except BenchmarkDataError as e:
            print(f"eval: {e}", file=sys.stderr)
            return 2
        items[name] = loaded[: args.limit] if args.limit else loaded

    runtime = None
    if args.model:
        import megrez_sglang  # noqa: F401  (configures SGLang for this host)
        from megrez_sglang.model.model_path import ModelPathError, resolve_model_path
        from megrez_sglang.programs import runtime as start_runtime

        try:
            model_path = resolve_model_path(args.model)
        except ModelPathError as e:
            print(f"eval: {e}", file=sys.stderr)
            return 2
        runtime = start_runtime(model_path)
        base_url, model_name = runtime.url, model_path
    else:
        base_url, model_name = args.base_url, None
    try:
        sampler = ServerSampler(base_url, config, api_key=args.api_key)
        info = {
            "model": model_name or sampler.model_path(), "served_model": sampler.model, "server": base_url,
            "sampling": config.as_dict(),
            "seeds_applied": sampler.sends_seeds,  # only a server that applies per-request seeds gets them
            "samples": args.samples, "limit": args.limit,
            "data": "hub" if data_dir is None else str(data_dir.resolve()),
            "benchmarks": names, "versions": package_versions(), "git_commit": git_revision(),
            "isolation": isolation,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        check_resumable(args.out, info)
        info["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
        (args.out / "run.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        results = {}
        for name, bench in benchmarks.items():
            records = run_benchmark(bench, items[name], sampler, args.out, samples=args.samples,
                                    concurrency=args.concurrency, progress=not args.no_progress)
            results[name] = bench.summarize(records)
            print(f"{name}: {results[name]['score']:.1f} ({bench.metric}, {len(records)} items)", flush=True)
        # benchmarks finished in earlier invocations of this run directory stay in the summary
        for name, cls in BENCHMARKS.items():
            path = records_path(args.out, cls())
            if name not in results and path.exists():
                results[name] = cls().summarize(load_records(path))
        write_summary(args.out, info, results, {n: BENCHMARKS[n]() for n in results})
        print(f"wrote {args.out / 'summary.md'}")
    finally:
        if runtime is not None:
            runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
