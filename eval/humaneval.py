"""HumanEval (164 problems): OpenCompass's instruction (prompts/humaneval.txt), the first fenced
code block of the reply, executed with the problem's tests in the sandbox; pass@1."""

from __future__ import annotations

import gzip
import json

from megrez_sglang.model.prompts import load_prompt

from .benchmark import Item, require_file
from .code import CodeBenchmark, first_code_block


class HumanEval(CodeBenchmark):
    name = "humaneval"
    card_score = 74.4

    def load(self, data_dir):
        with gzip.open(require_file(data_dir / "humaneval" / "HumanEval.jsonl.gz"), "rt") as f:
            return [self._item(json.loads(l)) for l in f]

    def load_from_hub(self):
        from datasets import load_dataset

        return [self._item(r) for r in load_dataset("openai/openai_humaneval", split="test")]

    @staticmethod
    def _item(r):
        return Item(id=r["task_id"], prompt=load_prompt("humaneval").format(prompt=r["prompt"]),
                    gold=r["canonical_solution"],
                    meta={"prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]})

    def extract(self, item, text):
        return first_code_block(text)

    def program(self, item, code):
        # A reply that defines the function stands alone (after the prompt's imports); a reply
        # that is only the body continues the prompt.
        if f"def {item.meta['entry_point']}" in code:
            imports = "\n".join(l for l in item.meta["prompt"].splitlines()
                                if l.startswith(("import ", "from ")))
            source = imports + "\n" + code
        else:
            source = item.meta["prompt"] + code
        return f"{source}\n\n{item.meta['test']}\n\ncheck({item.meta['entry_point']})\n"
