"""The trained tiny checkpoint's held-out split: a one-minute smoke test of any server.

Two benchmarks, generated (no data files) by the generator the tiny model was trained with
(``megrez_sglang.training.tiny_corpus``), from numbers and items it never saw:

* ``tiny_math``: 64 two-digit addition / subtraction word problems and computations, half
  Chinese, half English, with the card's math instruction; the answer is the last ``\\boxed{}``,
  graded as a number (GSM8K's rule);
* ``tiny_choice``: 64 four-option questions (which word is in a category, which number is even
  / odd, which sum has a value) with the card's answer-field instruction; graded on the letter.

The trained checkpoint (``megrez_sglang/checkpoints/tiny-trained``) scores well above chance on
both; a random-weight checkpoint scores about 0 % and 25 %. Not among the card's benchmarks:
``python -m eval`` runs them only when named (``--benchmarks tiny_math,tiny_choice``).
"""

from __future__ import annotations

from megrez_sglang.programs.answers import last_boxed
from megrez_sglang.training.tiny_corpus import held_out_items

from .benchmark import Benchmark, Item, mean
from .choice import ChoiceBenchmark
from .gsm8k import same_number

ITEMS_PER_BENCHMARK = 64


def _items(kind: str) -> list[Item]:
    return [Item(id=f"{kind}-{i}", prompt=t.prompt, gold=t.gold, letters=list(t.letters),
                 meta={"lang": t.lang, "key": list(t.key[1:])})
            for i, t in enumerate(held_out_items(kind, ITEMS_PER_BENCHMARK))]


def _by_language(records: list[dict]) -> dict[str, float]:
    by_lang = {}
    for r in records:
        by_lang.setdefault(r["meta"]["lang"], []).append(r["grade"]["correct"])
    return {f"accuracy_{lang}": 100 * mean(grades) for lang, grades in sorted(by_lang.items())}


class TinyMath(Benchmark):
    name = "tiny_math"
    kind = "math"
    metric = "EM"
    max_tokens = 160

    def load(self, data_dir=None):
        return _items("math")

    def load_from_hub(self):
        return self.load()

    def extract(self, item, text):
        return last_boxed(text)

    def grade(self, item, samples):
        from megrez_sglang.programs.answers import majority_answer

        answer, votes = majority_answer([s.answer for s in samples], same_number)
        return {"correct": float(same_number(item.gold, answer)), "voted": answer, "votes": votes,
                "sample_accuracy": mean(same_number(item.gold, s.answer) for s in samples)}

    def summarize(self, records):
        return {"score": 100 * mean(r["grade"]["correct"] for r in records), "n": len(records),
                **_by_language(records)}


class TinyChoice(ChoiceBenchmark):
    name = "tiny_choice"
    max_tokens = 96

    def load(self, data_dir=None):
        return _items("choice")

    def load_from_hub(self):
        return self.load()

    def summarize(self, records):
        return {"score": 100 * mean(r["grade"]["correct"] for r in records), "n": len(records),
                **_by_language(records)}
