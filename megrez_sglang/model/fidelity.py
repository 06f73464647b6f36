"""Comparing SGLang's greedy generation with the reference model's, token by token.

Used by the test suite (CPU, float32) and by the GPU check (scripts/gpu_check.py: FlashInfer,
CUDA graphs, bfloat16), with one rule for both: tokens must be equal, except that greedy is
undefined at a tie, so a divergence is accepted where the reference's two candidates are within
a tolerance of each other (and the rest of that sequence, a different continuation, is not
compared); logprobs must agree over the common prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "世界上最高的山峰是",
    "请逐步推理，并将最终答案放在\\boxed{}中。",
    "北京是中华人民共和国的首都，也是",
    "答案：",
    "The highest mountain in the world is",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "def sum_of_squares(numbers):",
    '{"answer": "C"} The quick brown fox',
]
NEW_TOKENS = 32


@dataclass
class Greedy:
    tokens: list[int]
    logprobs: list[float]
    step_logits: list[torch.Tensor]  # the reference's logits at each step (float32)


def prompt_ids(path: str) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(path)
    return [tok(p)["input_ids"] for p in PROMPTS]


def reference_greedy(path: str, prompts: list[list[int]], dtype=torch.float32, model=None,
                     new_tokens: int = NEW_TOKENS) -> list[Greedy]:
    model = model or AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    out = []
    for ids in prompts:
        with torch.no_grad():
            g = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=new_tokens,
                               do_sample=False, output_scores=True, return_dict_in_generate=True,
                               eos_token_id=None, pad_token_id=0)
        tokens = g.sequences[0, len(ids):].tolist()
        logits = [s[0].float().cpu() for s in g.scores]
        logprobs = [torch.log_softmax(l, -1)[t].item() for l, t in zip(logits, tokens, strict=True)]
        out.append(Greedy(tokens, logprobs, logits))
    return out


def reference_logprobs(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """Teacher-forced logprobs of `tokens` after `prompt` under the reference `model`."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()


def sglang_greedy(engine, prompts: list[list[int]], batched: bool,
                  new_tokens: int = NEW_TOKENS) -> list[tuple[list[int], list[float]]]:
    params = {"temperature": 0.0, "max_new_tokens": new_tokens, "ignore_eos": True}
    if batched:
        outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
    else:
        outs = [engine.generate(input_ids=p, sampling_params=params, return_logprob=True) for p in prompts]
    result = []
    for o in outs:
        lp = o["meta_info"]["output_token_logprobs"]
        result.append(([t for _, t, _ in lp], [l for l, _, _ in lp]))
    return result


@dataclass
class PromptComparison:
    """One prompt's greedy tokens, SGLang's against the reference's."""

    prompt: int
    tokens: int  # how many were generated
    diverged_at: int | None  # the first position where the tokens differ; None: identical
    reference_token: int | None
    sglang_token: int | None
    logit_gap: float | None  # the reference's logit of its choice minus that of SGLang's choice
    max_logprob_diff: float  # over the common prefix

    def problems(self, logprob_tol: float, tie_tol: float, compare_logprobs: bool = True) -> list[str]:
        found = []
        if self.diverged_at is not None and self.logit_gap > tie_tol:
            found.append(
                f"prompt {self.prompt} diverges at token "
                f"{self.diverged_at}: reference {self.reference_token}, sglang {self.sglang_token}, "
                f"reference logit gap {self.logit_gap:.3g} (not a tie: > {tie_tol:g})"
            )
        if compare_logprobs and self.max_logprob_diff > logprob_tol:
            found.append(f"prompt {self.prompt}: logprobs differ by {self.max_logprob_diff:.3g} "
                         f"(> {logprob_tol:g}) before any divergence")
        return found

    def describe(self) -> str:
        if self.diverged_at is None:
            return (f"prompt {self.prompt}: {self.tokens}/{self.tokens} tokens identical, "
                    f"max |dlogprob| {self.max_logprob_diff:.4f}")
        return (f"prompt {self.prompt}: first divergence at token {self.diverged_at} (reference "
                f"{self.reference_token}, sglang {self.sglang_token}, reference logit gap "
                f"{self.logit_gap:.4f}); max |dlogprob| before it {self.max_logprob_diff:.4f}")


def compare_greedy(reference: list[Greedy], sglang) -> list[PromptComparison]:
    """Per prompt: where SGLang's greedy tokens first leave the reference's, and by how much."""
    comparisons = []
    for i, (ref, (tokens, logprobs)) in enumerate(zip(reference, sglang, strict=True)):
        if len(tokens) != len(ref.tokens):
            raise AssertionError(f"prompt {i}: sglang gave {len(tokens)} tokens, the reference "
                                 f"{len(ref.tokens)}")
        k = next((j for j, (a, b) in enumerate(zip(ref.tokens, tokens, strict=True)) if a != b), None)
        common = len(tokens) if k is None else k
        diff = max((abs(a - b) for a, b in zip(ref.logprobs[:common], logprobs[:common], strict=True)),
                   default=0.0)
        if k is None:
            comparisons.append(PromptComparison(i, len(tokens), None, None, None, None, diff))
        else:
            logits = ref.step_logits[k]
            gap = (logits[ref.tokens[k]] - logits[tokens[k]]).item()
            comparisons.append(PromptComparison(i, len(tokens), k, ref.tokens[k], tokens[k], gap, diff))
    return comparisons


def assert_same_greedy(reference: list[Greedy], sglang, logprob_tol: float, tie_tol: float,
                       compare_logprobs: bool = True) -> None:
    """Tokens equal; logprobs within logprob_tol. Greedy is undefined at an exact tie: a
    divergence is accepted only where the reference's two choices are within tie_tol, and the
    rest of that sequence (a different continuation) is not compared."""
    problems = [p for c in compare_greedy(reference, sglang)
                for p in c.problems(logprob_tol, tie_tol, compare_logprobs)]
    assert not problems, "; ".join(problems)
