"""Decode speed with and without an output-format constraint, on the same engine, per grammar
backend.

    python bench/structured_output.py [--model PATH] [--backends xgrammar,outlines,llguidance]
                                      [--batch 8] [--new-tokens 128] [--repeats 3]

Each backend gets one engine; on it the same batch of prompts decodes --new-tokens tokens
unconstrained, then under a JSON-object grammar whose string field is free text (so the grammar
mask is applied at every step for about as many tokens), and under the \\boxed answer regex
(short answers: prefill weighs more in that rate).
Figures: decode tokens/s of the whole batch (the time of the same batch with one new token, i.e.
the prefill, taken off; best of --repeats). Target: the
constrained rate >= 0.9 x the unconstrained one. Default model: the `small` checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import megrez_sglang  # noqa: E402,F401  (configures SGLang for this host)
from megrez_sglang.build_checkpoint import cached_checkpoint  # noqa: E402
from megrez_sglang.engine import start_engine  # noqa: E402
from megrez_sglang.programs.grammars import BOXED_MAX_TOKENS, BOXED_REGEX  # noqa: E402

from report import print_table, write_json  # noqa: E402

# at least 600 characters of free text: the string stays open for the whole --new-tokens
FREE_TEXT_OBJECT = r'\{"reasoning": "[^"\\\x00-\x1f]{600,}"\}'
PROMPTS = ["请逐步推理：小明有3个苹果，又买了5个，现在有多少个？", "Please reason step by step: what is 12 * 7?",
           "世界上最高的山峰是哪座？", "Explain the difference between a list and a tuple.",
           "北京是中华人民共和国的首都。", "The quick brown fox", "答案：", "def sum_of_squares(numbers):"]


def rate(engine, prompts, params, repeats) -> tuple[float, float]:
    """Decode tokens/s of the batch (the time of a 1-token run, i.e. prefill, taken off), best of
    `repeats`; and the mean completion tokens per request."""
    best, tokens = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        engine.generate(prompts, {**params, "max_new_tokens": 1})
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = engine.generate(prompts, params)
        elapsed = time.perf_counter() - start - prefill
        tokens = sum(o["meta_info"]["completion_tokens"] for o in out)
        best = max(best, (tokens - len(prompts)) / elapsed)
    return best, tokens / len(prompts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--backends", default="xgrammar,outlines,llguidance")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    model = args.model or str(cached_checkpoint("small"))
    prompts = (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch]
    base = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": args.new_tokens, "ignore_eos": True}
    rows, records = [], []
    for backend in args.backends.split(","):
        engine = start_engine(model, grammar_backend=backend, log_level="error",
                              constrained_json_disable_any_whitespace=True)
        try:
            cases = {
                "unconstrained": base,
                "free-text JSON object": {**base, "regex": FREE_TEXT_OBJECT},
                # ends when the grammar does (ignore_eos would keep some backends going)
                "boxed answer": {**base, "max_new_tokens": BOXED_MAX_TOKENS, "ignore_eos": False,
                                 "regex": BOXED_REGEX},
            }
            for params in cases.values():  # warm-up: grammar compilation, torch.compile
                engine.generate(prompts[:2], {**params, "max_new_tokens": 8})
            unconstrained = None
            for case, params in cases.items():
                tps, mean_tokens = rate(engine, prompts, params, args.repeats)
                unconstrained = unconstrained or tps  # the first case
                rows.append([backend, case, round(mean_tokens, 1), tps, tps / unconstrained])
                records.append({"backend": backend, "case": case, "mean_completion_tokens": mean_tokens,
                                "tokens_per_s": tps, "ratio_to_unconstrained": tps / unconstrained})
        finally:
            engine.shutdown()
    print_table(f"Decode with and without constraints (batch {args.batch}, {Path(model).name})",
                ["backend", "case", "tokens/request", "tokens/s", "x unconstrained"], rows)
    write_json("structured_output", {"model": model, "batch": args.batch, "new_tokens": args.new_tokens,
                                     "results": records}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
