"""Comparing SGLang's greedy generation with the reference model's, token by token."""

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
            g = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=new_tokens, do_sample=False,
                               output_scores=True, return_dict_in_generate=True,
                               eos_token_id=None, pad_token_id=0)
        tokens = g.sequences[0, len(ids):].tolist()
        logits = [s[0].float().cpu() for s in g.scores]
        logprobs = [torch.log_softmax(l, -1)[t].item() for l, t in zip(logits, tokens)]
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


def assert_same_greedy(reference: list[Greedy], sglang, logprob_tol: float, tie_tol: float,
                       compare_logprobs: bool = True, prompts: list[str] = PROMPTS) -> list[int]:
    """Tokens equal; logprobs within logprob_tol. Greedy is undefined at an exact tie: a
    divergence is accepted only where the reference's two choices are within tie_tol, and the
    rest of that sequence (a different continuation) is not compared. `prompts` names the
    prompts in messages. Returns the indices of the sequences that diverged at a near-tie."""
    near_ties = []
    for i, (ref, (tokens, logprobs)) in enumerate(zip(reference, sglang)):
        assert len(tokens) == len(ref.tokens), f"prompt {i}: {len(tokens)} tokens"
        k = next((j for j, (a, b) in enumerate(zip(ref.tokens, tokens)) if a != b), len(tokens))
        if k < len(tokens):
            logits = ref.step_logits[k]
            gap = (logits[ref.tokens[k]] - logits[tokens[k]]).item()
            assert gap <= tie_tol, (
                f"prompt {i} ({prompts[i]!r}) diverges at token {k}: reference {ref.tokens[k]}, "
                f"sglang {tokens[k]}, reference logit gap {gap:.3g} (not a tie)"
            )
            near_ties.append(i)
        if compare_logprobs:
            diff = max((abs(a - b) for a, b in zip(ref.logprobs[:k], logprobs[:k])), default=0.0)
            assert diff <= logprob_tol, f"prompt {i}: logprobs differ by {diff:.3g}"
    return near_ties
