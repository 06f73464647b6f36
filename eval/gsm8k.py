"""GSM8K (test, 1,319): grade-school math word problems; the card's boxed instruction; graded
by GSM8K's number rules (commas, currency, units and full-width digits ignored; compared as
numbers)."""

from __future__ import annotations

import json
import re

from megrez_sglang.model.prompts import math_prompt
from megrez_sglang.programs.answers import last_boxed, majority_answer, normalize_text

from .benchmark import Benchmark, Item, mean, require_file


def gsm8k_number(text: str | None) -> float | None:
    """The number an answer states: the last number in it, after NFKC and with thousands
    separators, currency signs, percent signs and LaTeX text (units) removed."""
    if not text:
        return None
    t = normalize_text(text)
    t = re.sub(r"\\text\{[^}]*\}", " ", t)
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)
    t = t.replace("\\$", " ").replace("$", " ").replace("\\%", " ").replace("%", " ")
    numbers = re.findall(r"-?\d+(?:\.\d+)?", t)
    return float(numbers[-1]) if numbers else None


def same_number(a: str | None, b: str | None) -> bool:
    x, y = gsm8k_number(a), gsm8k_number(b)
    return x is not None and y is not None and abs(x - y) < 1e-6


class GSM8K(Benchmark):
    name = "gsm8k"
    kind = "math"
    metric = "EM"
    card_score = 83.6

    def load(self, data_dir):
        rows = [json.loads(l) for l in require_file(data_dir / "gsm8k" / "test.jsonl").open()]
        return [self._item(i, r["question"], r["answer"]) for i, r in enumerate(rows)]

    def load_from_hub(self):
        from datasets import load_dataset

        rows = load_dataset("openai/gsm8k", "main", split="test")
        return [self._item(i, r["question"], r["answer"]) for i, r in enumerate(rows)]

    @staticmethod
    def _item(i, question, answer):
        gold = answer.split("####")[-1].strip().replace(",", "")
        return Item(id=str(i), prompt=math_prompt(question, "en"), gold=gold)

    def extract(self, item, text):
        boxed = last_boxed(text)  # the card's format; otherwise GSM8K's "last number" rule
        return boxed if boxed is not None else text

    def grade(self, item, samples):
        answer, votes = majority_answer([s.answer for s in samples], same_number)
        return {"correct": float(same_number(item.gold, answer)), "voted": answer, "votes": votes,
                "sample_accuracy": mean(same_number(item.gold, s.answer) for s in samples)}
