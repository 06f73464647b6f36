"""MMLU-Pro (test, 12,032 items, 3-10 options): English questions with the card's answer-JSON
instruction; accuracy overall and per category. Graded on the letter (question 3983's
answer_index disagrees with its letter)."""

from __future__ import annotations

import gzip
import json

from megrez_sglang.model.prompts import choice_prompt, option_letters

from .benchmark import Item, accuracy_by, mean, require_file
from .choice import ChoiceBenchmark


class MMLUPro(ChoiceBenchmark):
    name = "mmlu_pro"
    card_score = 67.6

    def load(self, data_dir):
        with gzip.open(require_file(data_dir / "mmlu_pro" / "test.jsonl.gz"), "rt", encoding="utf-8") as f:
            return [self._item(json.loads(l)) for l in f]

    def load_from_hub(self):
        from datasets import load_dataset

        return [self._item(r) for r in load_dataset("TIGER-Lab/MMLU-Pro", split="test")]

    @staticmethod
    def _item(r):
        options = [o for o in r["options"] if o != "N/A"]
        return Item(id=str(r["question_id"]), prompt=choice_prompt(r["question"], options, "en"),
                    gold=r["answer"], letters=option_letters(options), meta={"category": r["category"]})

    def summarize(self, records):
        return {"score": 100 * mean(r["grade"]["correct"] for r in records), "n": len(records),
                "by_category": accuracy_by(records, "category")}
