"""The radix cache on a 5-shot C-Eval workload: prefill tokens computed and wall time, with and
without --disable-radix-cache, as ratios.

    python -m bench.radix_cache [--model PATH] [--data-dir DIR] [--subjects 6] [--questions N]

Each request is OpenCompass's 5-shot C-Eval prompt (the subject's five dev exemplars, then a
validation question; from the mirror in --data-dir / MEGREZ_EVAL_DATA, else the hub's
ceval/ceval-exam) and asks for the one answer token, sent one after another. Every question of a
subject shares the 5-shot prefix, which the radix cache computes once. Prefill tokens computed =
sum(prompt tokens - cached tokens). Target: >= 4x fewer with the cache.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import megrez_sglang  # noqa: F401  (configures SGLang for this host)
from eval.benchmark import data_dir_from_env
from megrez_sglang.model.build_checkpoint import cached_checkpoint
from megrez_sglang.serving.engine import start_engine

from .report import print_table, write_json

# OpenCompass ceval_gen_5f30c7's format (the workload, not this project's evaluation prompt).
HEADER = "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n"
QUESTION = "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案: "


def subject_rows(data_dir: Path | None, subjects: int) -> dict[str, dict[str, list[dict]]]:
    """{subject: {"dev": rows, "val": rows}} for the first `subjects` subjects."""
    if data_dir is not None:
        def read(path: Path) -> list[dict]:
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))

        val_files = sorted((data_dir / "ceval" / "val").glob("*_val.csv"))
        names = [p.name.removesuffix("_val.csv") for p in val_files]
        return {s: {split: read(data_dir / "ceval" / split / f"{s}_{split}.csv") for split in ("dev", "val")}
                for s in names[:subjects]}
    from datasets import get_dataset_config_names, load_dataset

    names = sorted(get_dataset_config_names("ceval/ceval-exam"))[:subjects]
    return {s: {split: list(load_dataset("ceval/ceval-exam", s, split=split)) for split in ("dev", "val")}
            for s in names}


def workload(data_dir: Path | None, subjects: int, questions: int) -> list[str]:
    prompts = []
    for subject, rows in subject_rows(data_dir, subjects).items():
        shots = "".join(QUESTION.format(**r) + r["answer"] + "\n\n" for r in rows["dev"])
        prompts += [HEADER.format(subject=subject) + shots + QUESTION.format(**r)
                    for r in rows["val"][: questions or None]]
    return prompts


def measure(model: str, prompts: list[str], disable_radix_cache: bool) -> dict:
    engine = start_engine(model, disable_radix_cache=disable_radix_cache, log_level="error")
    try:
        engine.generate("warm-up", {"max_new_tokens": 1})
        engine.flush_cache()
        computed = total = 0
        start = time.perf_counter()
        for prompt in prompts:
            meta = engine.generate(prompt, {"temperature": 0.0, "max_new_tokens": 1})["meta_info"]
            total += meta["prompt_tokens"]
            computed += meta["prompt_tokens"] - meta["cached_tokens"]
        return {"prompt_tokens": total, "prefill_tokens_computed": computed,
                "wall_s": time.perf_counter() - start}
    finally:
        engine.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--data-dir", type=Path, default=data_dir_from_env(),
                   help="a local mirror of the benchmarks (default: $MEGREZ_EVAL_DATA, else the hub)")
    p.add_argument("--subjects", type=int, default=6)
    p.add_argument("--questions", type=int, default=0, help="per subject (0: all of its val split)")
    p.add_argument("--out")
    args = p.parse_args()
    model = args.model or str(cached_checkpoint("small"))
    prompts = workload(args.data_dir, args.subjects, args.questions)
    cached = measure(model, prompts, disable_radix_cache=False)
    uncached = measure(model, prompts, disable_radix_cache=True)
    rows_ = [["radix cache on", cached["prompt_tokens"], cached["prefill_tokens_computed"], cached["wall_s"]],
             ["--disable-radix-cache", uncached["prompt_tokens"], uncached["prefill_tokens_computed"],
              uncached["wall_s"]]]
    print_table(f"5-shot C-Eval, {len(prompts)} requests ({args.subjects} subjects, "
                f"{args.questions or 'all'} questions each), "
                f"{Path(model).name}", ["", "prompt tokens", "prefill tokens computed", "wall s"], rows_)
    token_ratio = uncached["prefill_tokens_computed"] / cached["prefill_tokens_computed"]
    time_ratio = uncached["wall_s"] / cached["wall_s"]
    print(f"\nprefill tokens: {token_ratio:.2f}x fewer with the radix cache; "
          f"wall time: {time_ratio:.2f}x faster")
    write_json("radix_cache", {"model": model, "requests": len(prompts), "with_cache": cached,
                               "without_cache": uncached, "prefill_token_ratio": token_ratio,
                               "wall_time_ratio": time_ratio}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
