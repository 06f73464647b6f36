"""What every benchmark file defines: how to load its items, what to ask, how to grade, how to
summarise (simple-evals' shape: load items -> build prompt -> sample -> grade -> aggregate)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# Where the card's benchmarks live beside the project (see README); --data-dir overrides.
DEFAULT_DATA_DIR = Path(os.environ.get("MEGREZ_EVAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


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

    def load(self, data_dir: Path) -> list[Item]:
        raise NotImplementedError

    def load_from_hub(self) -> list[Item]:
        """The same items from the Hugging Face hub (needs a machine online)."""
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


def require_file(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"benchmark data not found: {path} (give --data-dir, the folder "
                                "laid out as ../shared/data, or --from-hub on a machine online)")
    return path
