"""MATH-500 (the PRM800K 500-problem split): the card's boxed instruction; graded with
math-verify, gold first."""

from __future__ import annotations

import json

from megrez_sglang.model.prompts import math_prompt
from megrez_sglang.programs.answers import last_boxed, majority_answer, math_equivalent

from .benchmark import Benchmark, Item, accuracy_by, mean, require_file


class Math500(Benchmark):
    name = "math500"
    kind = "math"
    metric = "EM"
    card_score = 81.6
    max_tokens = 2048

    def load(self, data_dir):
        rows = [json.loads(l) for l in require_file(data_dir / "math500" / "test.jsonl").open()]
        return [self._item(r) for r in rows]

    def load_from_hub(self):
        from datasets import load_dataset

        return [self._item(r) for r in load_dataset("HuggingFaceH4/MATH-500", split="test")]

    @staticmethod
    def _item(r):
        return Item(id=r["unique_id"], prompt=math_prompt(r["problem"], "en"), gold=r["answer"],
                    meta={"subject": r["subject"], "level": r["level"]})

    def extract(self, item, text):
        return last_boxed(text)

    def grade(self, item, samples):
        answer, votes = majority_answer([s.answer for s in samples], math_equivalent)
        return {"correct": float(math_equivalent(item.gold, answer) if answer else False),
                "voted": answer, "votes": votes,
                "sample_accuracy": mean(math_equivalent(item.gold, s.answer) for s in samples)}

    def summarize(self, records):
        return {"score": 100 * mean(r["grade"]["correct"] for r in records), "n": len(records),
                "by_subject": accuracy_by(records, "subject")}
