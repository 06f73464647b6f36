"""Decode speed with and without an output-format constraint, on the same engine, per grammar
backend.

    python -m bench.structured_output [--model PATH] [--backends xgrammar,outlines,llguidance]
                                      [--batch 8] [--new-tokens 128] [--repeats 3]

Each backend gets one engine; on it the same batch of prompts decodes --new-tokens tokens
unconstrained, then under a JSON-object grammar whose string field is free text (so the grammar
mask is applied at every step for about as many tokens), and under the \\boxed answer constraint
in each form the backend compiles (the finite regex everywhere, the recursive EBNF on xgrammar and
llguidance). A box ends when its grammar does, so each request has its own length; the box is
compared with an unconstrained run of exactly those lengths (per-request max_new_tokens,
ignore_eos; both greedy, so every repeat decodes the same boxes), so both decode the same
number of tokens with the same batch shrinking as requests finish.
Figures: decode tokens/s of the whole batch (the time of the same batch with one new token, i.e.
the prefill, taken off; best of --repeats). Target: the constrained rate >= 0.9 x the
unconstrained one. Default model: the `small` checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import megrez_sglang  # noqa: F401  (configures SGLang for this host)
from megrez_sglang.model.build_checkpoint import cached_checkpoint
from megrez_sglang.programs.grammars import (
    BACKEND_SUPPORTS,
    BOXED_EBNF,
    BOXED_MAX_TOKENS,
    BOXED_REGEX,
)
from megrez_sglang.serving.engine import start_engine

from .report import print_table, write_json

# at least 600 characters of free text: the string stays open for the whole --new-tokens
FREE_TEXT_OBJECT = r'\{"reasoning": "[^"\\\x00-\x1f]{600,}"\}'
PROMPTS = ["请逐步推理：小明有3个苹果，又买了5个，现在有多少个？",
           "Please reason step by step: what is 12 * 7?", "世界上最高的山峰是哪座？",
           "Explain the difference between a list and a tuple.",
           "北京是中华人民共和国的首都。", "The quick brown fox", "答案：", "def sum_of_squares(numbers):"]


def rate(engine, prompts, params, repeats) -> tuple[float, list[int]]:
    """Decode tokens/s of the batch (the time of a 1-token run, i.e. prefill, taken off), best of
    `repeats`; and the completion tokens of each request (of the last repeat). `params`: one
    dict for every prompt, or a list of them."""
    per_prompt = params if isinstance(params, list) else [params] * len(prompts)
    best, lengths = 0.0, []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.generate(prompts, [{**p, "max_new_tokens": 1} for p in per_prompt])
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = engine.generate(prompts, per_prompt)
        elapsed = time.perf_counter() - start - prefill
        lengths = [o["meta_info"]["completion_tokens"] for o in out]
        best = max(best, (sum(lengths) - len(prompts)) / elapsed)
    return best, lengths


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
            }
            # ends when the grammar does (ignore_eos would keep some backends going)
            boxes = {"boxed answer (regex)": {"regex": BOXED_REGEX}}
            if "ebnf" in BACKEND_SUPPORTS[backend]:
                boxes["boxed answer (EBNF)"] = {"ebnf": BOXED_EBNF}
            for params in [*cases.values(), *boxes.values()]:  # warm-up: grammar compilation
                engine.generate(prompts[:2], {**base, **params, "max_new_tokens": 8})
            unconstrained, _ = rate(engine, prompts, base, args.repeats)

            def record(case, tps, lengths, reference, backend=backend):
                mean = sum(lengths) / len(lengths)
                rows.append([backend, case, round(mean, 1), tps, tps / reference])
                records.append({"backend": backend, "case": case, "mean_completion_tokens": mean,
                                "tokens_per_s": tps, "ratio_to_unconstrained": tps / reference})

            record("unconstrained", unconstrained, [args.new_tokens] * len(prompts), unconstrained)
            tps, lengths = rate(engine, prompts, cases["free-text JSON object"], args.repeats)
            record("free-text JSON object", tps, lengths, unconstrained)
            # Greedy, so that every repeat decodes the same boxes (and the reference their lengths).
            greedy = {**base, "temperature": 0.0}
            for case, constraint in boxes.items():
                tps, lengths = rate(engine, prompts, {**greedy, "max_new_tokens": BOXED_MAX_TOKENS,
                                                      "ignore_eos": False, **constraint}, args.repeats)
                same_lengths = [{**greedy, "max_new_tokens": n} for n in lengths]
                reference, _ = rate(engine, prompts, same_lengths, args.repeats)
                record(f"unconstrained, the box's lengths ({case})", reference, lengths, reference)
                record(case, tps, lengths, reference)
        finally:
            engine.shutdown()
    print_table(f"Decode with and without constraints (batch {args.batch}, {Path(model).name})",
                ["backend", "case", "tokens/request", "tokens/s", "x unconstrained"], rows)
    write_json("structured_output", {"model": model, "batch": args.batch, "new_tokens": args.new_tokens,
                                     "results": records}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
