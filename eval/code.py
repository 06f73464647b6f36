"""What the code benchmarks (HumanEval, MBPP) share: reading code out of a reply, running it in
the sandbox, pass@1 over the samples; every record names the isolation its code ran under."""

from __future__ import annotations

import re

from .benchmark import Benchmark, mean
from .sandbox import isolation_level, run_program

FENCED = re.compile(r"```(?:[Pp]ython|py|python3)?[ \t]*\n(.*?)```", re.S)


def first_code_block(text: str) -> str:
    """The first fenced code block; an unclosed fence runs to the end; no fence: the whole text."""
    match = FENCED.search(text)
    if match:
        return match.group(1)
    start = re.search(r"```(?:[Pp]ython|py|python3)?[ \t]*\n", text)
    return text[start.end():] if start else text


class CodeBenchmark(Benchmark):
    kind = "free"
    metric = "Pass@1"
    max_tokens = 1024
    # Where no isolation is available, the generated code runs only if the user said so
    # (--allow-unsandboxed-code); otherwise grading raises eval.sandbox.SandboxUnavailable.
    allow_unsandboxed: bool = False

    def program(self, item, code: str) -> str:
        raise NotImplementedError

    def grade(self, item, samples):
        runs = [run_program(self.program(item, s.answer or ""), allow_unsandboxed=self.allow_unsandboxed)
                for s in samples]
        return {"correct": mean(r.passed for r in runs), "status": [r.status for r in runs],
                "output": runs[0].output[-500:] if runs and not runs[0].passed else "",
                "isolation": isolation_level()}
