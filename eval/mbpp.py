"""MBPP (test split: task ids 11-510): OpenCompass's 3-shot format (tasks 2-4 as examples, the
answer between [BEGIN] and [DONE]), executed against the task's asserts in the sandbox; pass@1."""

from __future__ import annotations

import json
import re

from megrez_sglang.model.prompts import load_prompt

from .benchmark import Item, require_file
from .code import CodeBenchmark, first_code_block

TEST_IDS = range(11, 511)
SHOT_IDS = (2, 3, 4)


class MBPP(CodeBenchmark):
    name = "mbpp"
    card_score = 88.0
    max_tokens = 768

    def load(self, data_dir):
        lines = require_file(data_dir / "mbpp" / "mbpp.jsonl").open()
        rows = {r["task_id"]: r for r in map(json.loads, lines)}
        return self._items(rows)

    def load_from_hub(self):
        from datasets import load_dataset

        rows = {}
        for split in ("prompt", "test"):  # task ids 1-10 (the shots) and 11-510
            split_rows = load_dataset("google-research-datasets/mbpp", "full", split=split)
            rows.update({r["task_id"]: r for r in split_rows})
        return self._items(rows)

    def _items(self, rows):
        shots = "".join(self._task(rows[i]) + load_prompt("mbpp_answer").format(code=rows[i]["code"]) + "\n"
                        for i in SHOT_IDS)
        return [Item(id=str(i), prompt=shots + self._task(rows[i]), gold=rows[i]["code"],
                     meta={"tests": rows[i]["test_list"], "setup": rows[i].get("test_setup_code", "")})
                for i in TEST_IDS if i in rows]

    @staticmethod
    def _task(r):
        return load_prompt("mbpp_task").format(text=r["text"], tests="\n".join(r["test_list"])) + "\n"

    def extract(self, item, text):
        match = re.search(r"\[BEGIN\]\s*(.*?)\s*(?:\[DONE\]|$)", text, re.S)
        code = match.group(1) if match else first_code_block(text)
        code = code.strip()
        for quote in ("'''", '"""', "'", '"'):  # OpenCompass's shots quote the code
            if len(code) >= 2 * len(quote) and code.startswith(quote) and code.endswith(quote):
                code = code[len(quote):-len(quote)]
                break
        return first_code_block(code) if "```" in code else code

    def program(self, item, code):
        # the setup may use what the solution defines (task 367 builds trees of its Node class)
        return "\n".join([code, "", item.meta["setup"] or "", *item.meta["tests"], ""])
