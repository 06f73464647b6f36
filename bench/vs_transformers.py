"""SGLang against the transformers baseline (the reference model's generate(), the model card's
first path), the same prompts and token counts in one run, on the `small` checkpoint.

    python -m bench.vs_transformers [--model PATH] [--batch 1,8] [--new-tokens 64]

Greedy decoding, --new-tokens per prompt (eos ignored). Figures: output tokens/s of each and
their ratio. The transformers side runs in this process with the same threads SGLang's
scheduler gets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import megrez_sglang  # noqa: F401  (configures SGLang for this host)
from megrez_sglang.model.build_checkpoint import cached_checkpoint
from megrez_sglang.serving.engine import start_engine

from .report import print_table, write_json

PROMPTS = ["世界上最高的山峰是", "Please reason step by step: what is 12 * 7?",
           "北京是中华人民共和国的首都，也是", "The quick brown fox", "def sum_of_squares(numbers):",
           "请逐步推理，并将最终答案放在\\boxed{}中。",
           "Explain mixture-of-experts models.", "答案："]


def transformers_rate(model, tokenizer, prompts, new_tokens) -> float:
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        start = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        elapsed = time.perf_counter() - start
    return (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts) / elapsed


def sglang_rate(engine, prompts, new_tokens) -> float:
    params = {"temperature": 0.0, "max_new_tokens": new_tokens, "ignore_eos": True}
    engine.generate(prompts, {**params, "max_new_tokens": 4})
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return sum(o["meta_info"]["completion_tokens"] for o in out) / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out")
    args = p.parse_args()
    model_path = args.model or str(cached_checkpoint("small"))
    batches = [int(b) for b in args.batch.split(",")]
    prompt_sets = {b: (PROMPTS * (b // len(PROMPTS) + 1))[:b] for b in batches}

    engine = start_engine(model_path, dtype=args.dtype, log_level="error")
    try:
        sglang = {b: sglang_rate(engine, prompt_sets[b], args.new_tokens) for b in batches}
    finally:
        engine.shutdown()  # before transformers runs: the two do not share the cores

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, args.dtype)).eval()
    hf = {b: transformers_rate(model, tokenizer, prompt_sets[b], args.new_tokens) for b in batches}

    rows = [[b, hf[b], sglang[b], sglang[b] / hf[b]] for b in batches]
    print_table(f"Greedy decode, {args.new_tokens} new tokens per prompt "
                f"({Path(model_path).name}, {args.dtype})",
                ["batch", "transformers tok/s", "SGLang tok/s", "SGLang / transformers"], rows)
    write_json("vs_transformers", {"model": model_path, "dtype": args.dtype, "new_tokens": args.new_tokens,
                                   "results": [{"batch": b, "transformers_tokens_per_s": hf[b],
                                                "sglang_tokens_per_s": sglang[b],
                                                "ratio": sglang[b] / hf[b]} for b in batches]}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
