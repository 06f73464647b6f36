"""The trained tiny checkpoint's held-out split as data files for lm-evaluation-harness.

    python -m eval.lm_eval_data [DIR]     (default: eval/lm_eval_tasks)

writes tiny_math.jsonl and tiny_choice.jsonl, one row per item of eval/tiny_heldout.py (id,
prompt, gold, letters, lang), which the task YAML files there read: `lm_eval --include_path
eval/lm_eval_tasks ...` then needs no hub. A test checks that the committed files are current.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .benchmark import Benchmark
from .tiny_heldout import TinyChoice, TinyMath

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"


def rows(bench: Benchmark) -> list[dict]:
    return [{"id": item.id, "prompt": item.prompt, "gold": item.gold, "letters": item.letters,
             "lang": item.meta["lang"]} for item in bench.load()]


def jsonl(bench: Benchmark) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows(bench))


def write(directory: Path = TASKS_DIR) -> list[Path]:
    written = []
    for bench in (TinyMath(), TinyChoice()):
        path = directory / f"{bench.name}.jsonl"
        path.write_text(jsonl(bench))
        written.append(path)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m eval.lm_eval_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=TASKS_DIR)
    for path in write(parser.parse_args().directory):
        print(path)
