"""IFEval (541 prompts): verifiable instructions, graded with Google's checkers as packaged in
``if-verifiable``; prompt- and instruction-level accuracy, strict and loose. The checkers' NLTK
data (punkt_tab) comes from <data-dir>/nltk_data with a local mirror; otherwise from NLTK's own
search path, downloaded there once if missing."""

from __future__ import annotations

import json
import os

from .benchmark import Benchmark, BenchmarkDataError, Item, mean, require_file

PUNKT = "tokenizers/punkt_tab/english"


def use_nltk_data(data_dir=None) -> None:
    """Make punkt_tab findable before the checkers import NLTK: the mirror's nltk_data/ first,
    else NLTK's search path, else one download into NLTK's default folder."""
    import nltk

    folder = data_dir / "nltk_data" if data_dir is not None else None
    if folder is not None and folder.is_dir():
        os.environ["NLTK_DATA"] = str(folder)
        if str(folder) not in nltk.data.path:
            nltk.data.path.insert(0, str(folder))
    try:
        nltk.data.find(PUNKT)
    except LookupError:
        if not nltk.download("punkt_tab", quiet=True):
            raise BenchmarkDataError("ifeval: NLTK's punkt_tab is not installed and could not be "
                                     "downloaded; give a mirror with nltk_data/ (--data-dir)") from None


class IFEval(Benchmark):
    name = "ifeval"
    kind = "free"
    metric = "Prompt Strict"
    card_score = 80.2
    max_tokens = 1280

    def load(self, data_dir):
        use_nltk_data(data_dir)
        rows = [json.loads(l) for l in require_file(data_dir / "ifeval" / "input_data.jsonl").open()]
        return [self._item(r) for r in rows]

    def load_from_hub(self):
        from datasets import load_dataset

        use_nltk_data()
        return [self._item(r) for r in load_dataset("google/IFEval", split="train")]

    @staticmethod
    def _item(r):
        # null-valued kwargs are not arguments of the checkers
        kwargs = [{k: v for k, v in kw.items() if v is not None} for kw in r["kwargs"]]
        return Item(id=str(r["key"]), prompt=r["prompt"], gold=None,
                    meta={"instruction_id_list": r["instruction_id_list"], "kwargs": kwargs})

    def grade(self, item, samples):
        from if_verifiable.common import evaluate_instructions
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

        per_sample = []
        for s in samples:
            results, _ = evaluate_instructions(s.text, item.meta["instruction_id_list"],
                                               item.meta["kwargs"], item.prompt, INSTRUCTION_DICT)
            n = len(item.meta["instruction_id_list"])  # an empty reply follows no instruction
            strict = [r.strict_pass for r in results] + [False] * (n - len(results))
            loose = [r.loose_pass for r in results] + [False] * (n - len(results))
            per_sample.append({"prompt_strict": all(strict), "prompt_loose": all(loose),
                               "inst_strict": strict, "inst_loose": loose})
        return {"correct": mean(p["prompt_strict"] for p in per_sample),
                "prompt_loose": mean(p["prompt_loose"] for p in per_sample),
                "inst_strict": [mean(x) for x in zip(*(p["inst_strict"] for p in per_sample), strict=True)],
                "inst_loose": [mean(x) for x in zip(*(p["inst_loose"] for p in per_sample), strict=True)]}

    def summarize(self, records):
        inst_strict = [x for r in records for x in r["grade"]["inst_strict"]]
        inst_loose = [x for r in records for x in r["grade"]["inst_loose"]]
        return {"score": 100 * mean(r["grade"]["correct"] for r in records), "n": len(records),
                "prompt_strict": 100 * mean(r["grade"]["correct"] for r in records),
                "prompt_loose": 100 * mean(r["grade"]["prompt_loose"] for r in records),
                "instruction_strict": 100 * mean(inst_strict),
                "instruction_loose": 100 * mean(inst_loose)}
