"""C-Eval (validation split, 1,346 items in 52 subjects): Chinese four-option questions with the
card's answer-JSON instruction. Score: the mean over subjects (as OpenCompass reports it), with
the micro average beside it. The test split's answers are not public."""

from __future__ import annotations

import csv

from megrez_sglang.model.prompts import choice_prompt

from .benchmark import Item, accuracy_by, mean, require_file
from .choice import ChoiceBenchmark

LETTERS = ["A", "B", "C", "D"]


class CEval(ChoiceBenchmark):
    name = "ceval"
    card_score = 91.7

    def load(self, data_dir):
        folder = require_file(data_dir / "ceval" / "val")
        items = []
        for path in sorted(folder.glob("*_val.csv")):
            subject = path.name.removesuffix("_val.csv")
            with path.open(newline="", encoding="utf-8") as f:
                items += [self._item(subject, row) for row in csv.DictReader(f)]
        return items

    def load_from_hub(self):
        from datasets import get_dataset_config_names, load_dataset

        items = []
        for subject in get_dataset_config_names("ceval/ceval-exam"):
            rows = load_dataset("ceval/ceval-exam", subject, split="val")
            items += [self._item(subject, row) for row in rows]
        return items

    @staticmethod
    def _item(subject, row):
        options = {l: row[l] for l in LETTERS}
        return Item(id=f"{subject}/{row['id']}", prompt=choice_prompt(row["question"], options, "zh"),
                    gold=row["answer"].strip(), letters=LETTERS, meta={"subject": subject})

    def summarize(self, records):
        by_subject = accuracy_by(records, "subject")
        return {"score": mean(by_subject.values()), "n": len(records),
                "micro_average": 100 * mean(r["grade"]["correct"] for r in records),
                "by_subject": by_subject}
