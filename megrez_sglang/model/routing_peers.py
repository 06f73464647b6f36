"""SGLang's GPU routing kernels against the reference router (docs/gpu-topk.md).

On CUDA, SGLang 0.5.23 routes a Megrez2 layer (sigmoid scores, a correction bias, grouped top-k)
with one of two kernels, chosen in ``biased_grouped_topk_gpu`` (sglang/srt/layers/moe/topk.py):
FlashInfer's ``fused_topk_deepseek`` when its constraints hold (among them renormalization and
``topk_group * n_group >= top_k``), else SGLang's Triton router ``moe_fused_gate``. The shipped
config (one group, top-6) takes the Triton router; FlashInfer's kernel is reached with grouped
variants such as n_group 4 / topk_group 2. This module compares any route's output with
``reference.select_experts`` on the same logits, as sets of experts per token (tie-aware) and
weights; the GPU check's ``topk`` step and tests/test_gpu_topk.py use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import MegrezMoeConfig
from .reference import select_experts

# Two selections are equally good when their summed biased scores agree to this (float32 sums of
# six values of magnitude ~1): a different pick among exactly tied experts is not a defect.
TIE_TOL = 1e-5


@dataclass
class RouteAgreement:
    """One route's output against the reference's on the same logits."""

    tokens: int
    identical_sets: int  # tokens whose expert set equals the reference's
    tie_swaps: int  # tokens whose set differs only among experts with equal biased scores
    mismatched: list[int] = field(default_factory=list)  # tokens with a genuinely different set
    max_weight_diff: float = 0.0  # over tokens with identical sets, expert by expert

    @property
    def agrees(self) -> bool:
        return not self.mismatched


def biased_scores(router_logits: torch.Tensor, correction_bias: torch.Tensor | None,
                  config: MegrezMoeConfig) -> torch.Tensor:
    """What selection ranks (reference.select_experts): score + correction bias, float32."""
    logits = router_logits.float()
    scores = logits.sigmoid() if config.scoring_func == "sigmoid" else logits.softmax(-1)
    return scores if correction_bias is None else scores + correction_bias.float()


def compare_with_reference(router_logits: torch.Tensor, correction_bias: torch.Tensor | None,
                           config: MegrezMoeConfig, weights: torch.Tensor,
                           expert_ids: torch.Tensor) -> RouteAgreement:
    """A route's (weights [T, k], expert ids [T, k]) against the reference router's on the same
    logits. Weights are compared as the route returns them: the reference applies no
    routed_scaling_factor in routing (the model class multiplies by it once, after the experts),
    so a route that folded the factor in would show up here as a weight difference."""
    logits = router_logits.detach().float().cpu()
    bias = None if correction_bias is None else correction_bias.detach().float().cpu()
    ref_weights, ref_ids = select_experts(logits, bias, config)
    weights, expert_ids = weights.detach().float().cpu(), expert_ids.detach().long().cpu()
    ranked = biased_scores(logits, bias, config)
    ref_ids, ref_order = ref_ids.sort(-1)
    ids, order = expert_ids.sort(-1)
    same = (ids == ref_ids).all(-1)
    result = RouteAgreement(tokens=logits.shape[0], identical_sets=int(same.sum()), tie_swaps=0)
    for token in (~same).nonzero().flatten().tolist():
        gap = ranked[token, ids[token]].sum() - ranked[token, ref_ids[token]].sum()
        if abs(float(gap)) <= TIE_TOL:
            result.tie_swaps += 1
        else:
            result.mismatched.append(token)
    if same.any():
        diff = weights.gather(1, order)[same] - ref_weights.gather(1, ref_order)[same]
        result.max_weight_diff = float(diff.abs().max())
    return result
