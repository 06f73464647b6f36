"""What the tasks' YAML files call (`!function utils.NAME`): the held-out items from the JSONL files
beside this one, and the answer filters. The filters read answers with the same functions as
`python -m eval --free` (megrez_sglang.programs.answers), so lm-eval's exact_match and the project's grading
agree item by item on the same replies; lm-eval's own request path (its chat-completions and
completions clients, its stop and length handling) is what the comparison tests.

The JSONL files are the held-out split of eval/tiny_heldout.py, written by
`python -m eval.tiny_heldout --lm-eval-data eval/lm_eval_tasks` (a test checks they are current).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from eval.gsm8k import gsm8k_number  # the repository's eval package (on the path in its environment)
from megrez_sglang.programs.answers import extract_choice, last_boxed

HERE = Path(__file__).resolve().parent
NO_ANSWER = "[no answer]"  # never a gold answer


def _held_out(name: str, **_metadata) -> datasets.DatasetDict:
    # a local file (no hub), found next to this module whatever the working directory
    return datasets.load_dataset("json", data_files={"test": str(HERE / f"{name}.jsonl")})


def tiny_math_items(**metadata) -> datasets.DatasetDict:
    return _held_out("tiny_math", **metadata)


def tiny_choice_items(**metadata) -> datasets.DatasetDict:
    return _held_out("tiny_choice", **metadata)


def canonical_number(value: float) -> str:
    """How the data files spell a number (the golds) and the filter spells an answer: 42, -7, 2.5."""
    return str(int(value)) if value.is_integer() else repr(value)


def boxed_number(resps, docs):
    """The last \\boxed{} of each reply, as the number GSM8K's rule reads in it ("42", "-7")."""
    def number(text: str) -> str:
        value = gsm8k_number(last_boxed(text))
        return NO_ANSWER if value is None else canonical_number(value)

    return [[number(r) for r in doc_resps] for doc_resps in resps]


def answer_letter(resps, docs):
    """The letter each reply states (its answer object, or any phrasing megrez_sglang.programs.answers
    reads), restricted to the item's letters."""
    return [[extract_choice(r, doc["letters"]) or NO_ANSWER for r in doc_resps]
            for doc_resps, doc in zip(resps, docs, strict=True)]


def answer_objects(doc) -> list[str]:
    """The item's options as the answer objects the card asks for: {"answer": "A"}, ..."""
    return [json.dumps({"answer": letter}, ensure_ascii=False) for letter in doc["letters"]]
