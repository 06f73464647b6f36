"""What the multiple-choice benchmarks (C-Eval, MMLU-Pro) share: extraction and voting on letters."""

from __future__ import annotations

from megrez_sglang.programs.answers import extract_choice, majority_answer

from .benchmark import Benchmark, mean


class ChoiceBenchmark(Benchmark):
    kind = "choice"
    metric = "EM"
    max_tokens = 1024

    def extract(self, item, text):
        return extract_choice(text, item.letters)

    def grade(self, item, samples):
        letter, votes = majority_answer([s.answer for s in samples])
        return {"correct": float(letter == item.gold), "voted": letter, "votes": votes,
                "sample_accuracy": mean(s.answer == item.gold for s in samples)}
