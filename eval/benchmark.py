"""What every benchmark file defines: how to load its items, what to ask, how to grade, how to
summarise (simple-evals' shape: load items -> build prompt -> sample -> grade -> aggregate)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# A local mirror of the benchmarks (layout: eval/README.md); unset, they come from the Hugging Face hub.
DATA_DIR_ENV = "MEGREZ_EVAL_DATA"


def data_dir_from_env() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


class BenchmarkDataError(RuntimeError):
    """A benchmark's items could not be loaded (missing mirror file, hub unreachable)."""


@dataclass
class Item:
    id: str
    prompt: str  # the user message (prompts/ templates already applied)
    gold: Any
    letters: list[str] = field(default_factory=list)  # multiple choice: the item's own letters
    meta: dict = field(default_factory=dict)  # subject, category, tests, ...


@dataclass
class Sample:
    text: str  # the whole reply
    answer: str | None  # what was extracted: a math answer, a letter, or code
    completion_tokens: int
    latency_s: float


class Benchmark:
    name: ClassVar[str]
    # "math": boxed answers; "choice": letters; "free": text graded as a whole (IFEval, code)
    kind: ClassVar[str]
    metric: ClassVar[str]  # the headline metric, as the card reports it
    card_score: ClassVar[float | None] = None  # Megrez2-3x7B-A3B-Preview's figure
    max_tokens: ClassVar[int] = 1024

    def items(self, data_dir: Path | None) -> list[Item]:
        """The benchmark's items from the local mirror `data_dir`, or (None) from the Hugging Face
        hub through `datasets` (its cache makes the second time offline-safe)."""
        if data_dir is not None:
            return self.load(data_dir)
        try:
            return self.load_from_hub()
        except Exception as e:  # noqa: BLE001 - offline, unknown dataset, hub errors of every kind
            raise BenchmarkDataError(
                f"{self.name}: could not load it from the Hugging Face hub ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); on a machine offline give a local "
                f"mirror with --data-dir or {DATA_DIR_ENV}") from e

    def load(self, data_dir: Path) -> list[Item]:
        """The items from a local mirror laid out as eval/README.md describes."""
        raise NotImplementedError

    def load_from_hub(self) -> list[Item]:
        """The same items from the Hugging Face hub."""
        raise NotImplementedError(f"{self.name} has no hub loader")

    def extract(self, item: Item, text: str) -> str | None:
        """The answer in an unconstrained reply (constrained replies give it directly)."""
        return text

    def grade(self, item: Item, samples: list[Sample]) -> dict:
        """At least {"correct": 0..1} (the item's score under the headline metric)."""
        raise NotImplementedError

    def summarize(self, records: list[dict]) -> dict:
        """{"score": headline metric in %, ...breakdowns} from the per-item records."""
        return {"score": 100 * mean([r["grade"]["correct"] for r in records]), "n": len(records)}


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def accuracy_by(records: list[dict], key: str) -> dict[str, float]:
    """Score in % per value of the items' meta[key] (subject, category, ...)."""
    groups: dict[str, list[float]] = {}
    for r in records:
        groups.setdefault(r["meta"][key], []).append(r["grade"]["correct"])
    return {k: 100 * mean(v) for k, v in sorted(groups.items())}


def require_file(path: Path) -> Path:
    if not path.exists():
        raise BenchmarkDataError(f"benchmark data not found: {path} (--data-dir / {DATA_DIR_ENV} "
                                 "must be a mirror laid out as eval/README.md describes; without "
                                 "either, the benchmarks come from the Hugging Face hub)")
    return path
