"""MegrezMoeForCausalLM through sglang.Engine (CPU, torch_native attention) against the reference.

Greedy tokens of 8 Chinese and English prompts x 32 new tokens, one at a time and batched, and
per-token logprobs within 1e-3, over a matrix of configurations that covers every value of each
dimension; always with different correction biases in the layers of a sharing group. These
checkpoints have no bigram prior, so that every token depends on attention and routing.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from megrez_sglang.model.fidelity import (
    PROMPTS,
    assert_same_greedy,
    prompt_ids,
    reference_greedy,
    reference_logprobs,
    sglang_greedy,
)

# Each row: num_key_value_heads, experts_shared_frequency, first_k_dense_replace,
# n_group/topk_group, routed_scaling_factor, norm_topk_prob, pre_gate (+ routing method, scoring,
# shared experts, attention bias, head_dim other than hidden_size / num_attention_heads).
MATRIX = {
    "kv1-share3-dense1-ungrouped-attnbias-head24": dict(
        num_key_value_heads=1, experts_shared_frequency=3, first_k_dense_replace=1,
        attention_bias=True, head_dim=24),
    "kv2-share1-dense2-grouped-rsf2.5-unnormalised": dict(
        num_key_value_heads=2, experts_shared_frequency=1, first_k_dense_replace=2, n_group=4,
        topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=False),
    "kv4-share2-grouped-limited-softmax-rsf2.5-no-pregate": dict(
        num_key_value_heads=4, experts_shared_frequency=2, n_group=4, topk_group=2,
        topk_method="group_limited_greedy", scoring_func="softmax", routed_scaling_factor=2.5,
        pre_gate=False),
    "kv2-share3-dense2-rsf2.5-no-pregate": dict(
        num_key_value_heads=2, experts_shared_frequency=3, first_k_dense_replace=2,
        routed_scaling_factor=2.5, pre_gate=False),
    "kv4-share3-grouped-unnormalised": dict(num_key_value_heads=4, n_group=4, topk_group=2,
                                           norm_topk_prob=False),
    "kv2-dense0-noshared-greedy-softmax": dict(num_key_value_heads=2, first_k_dense_replace=0,
                                               n_shared_experts=0, topk_method="greedy",
                                               scoring_func="softmax"),
    # the real checkpoint's guessed fields at their other candidate values (rope_theta 5e6 and a
    # different eps and dense width): computed with the checkpoint's values, as the reference does
    "kv1-rope5e6-eps1e-6-dense160": dict(num_key_value_heads=1, rope_theta=5e6, rms_norm_eps=1e-6,
                                         intermediate_size=160),
}
LOGPROB_TOL = 1e-3
TIE_TOL = 1e-5


@pytest.fixture(scope="module", params=sorted(MATRIX))
def case(request, checkpoints):
    path = checkpoints(request.param, bigram_prior=0.0, seed=7, **MATRIX[request.param])
    prompts = prompt_ids(path)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return dict(path=path, prompts=prompts, expected=reference_greedy(path, prompts, model=reference))


@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "batched"])
def test_greedy_tokens_and_logprobs_match_the_reference(case, engines, batched):
    got = sglang_greedy(engines.get(case["path"], dtype="float32"), case["prompts"], batched)
    assert_same_greedy(case["expected"], got, LOGPROB_TOL, TIE_TOL)
    assert len({x for t, _ in got for x in t}) > 16  # not one token repeated everywhere


def test_publisher_bugs_would_be_caught(checkpoints, engines):
    """The comparison is sharp enough to see the demo's defects: routing every layer of a group
    with the owner's correction bias, or applying routed_scaling_factor twice, moves the
    logprobs of SGLang's tokens far beyond the tolerance."""
    path = checkpoints("publisher-bugs", bigram_prior=0.0, seed=7,
                       **{**MATRIX["kv4-share3-grouped-unnormalised"], "routed_scaling_factor": 2.5})
    prompts = prompt_ids(path)
    got = sglang_greedy(engines.get(path, dtype="float32"), prompts, batched=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def max_deviation():
        return max(max(abs(a - b) for a, b in zip(reference_logprobs(model, p, t), lp, strict=True))
                   for p, (t, lp) in zip(prompts, got, strict=True))

    assert max_deviation() <= LOGPROB_TOL  # the faithful reference agrees
    layers = model.model.layers
    with torch.no_grad():
        saved = [layers[l].mlp.gate.e_score_correction_bias.clone() for l in range(1, 7)]
        for l in range(1, 7):  # the demo: the owner's bias for the whole group
            layers[l].mlp.gate.e_score_correction_bias.copy_(
                layers[model.config.owner_layer(l)].mlp.gate.e_score_correction_bias)
        assert max_deviation() > 100 * LOGPROB_TOL
        for l, b in zip(range(1, 7), saved, strict=True):
            layers[l].mlp.gate.e_score_correction_bias.copy_(b)
        for l in range(1, 7):  # the demo on CUDA: the factor twice
            layers[l].mlp.routed_scaling_factor = 2.5 * 2.5
        assert max_deviation() > 100 * LOGPROB_TOL


def test_bfloat16_greedy_tokens_match_on_the_default_tiny_checkpoint(tiny_checkpoint, engines):
    prompts = prompt_ids(tiny_checkpoint)
    engine = engines.get(tiny_checkpoint)  # dtype from the config: bfloat16
    got = sglang_greedy(engine, prompts, batched=True)
    expected = reference_greedy(tiny_checkpoint, prompts, dtype=torch.bfloat16)
    assert [t for t, _ in got] == [r.tokens for r in expected]


def test_no_standin_placeholder_was_called(standin_trace, tiny_engine):
    """Generation through sglang.Engine (plain, batched, every configuration above) never called
    a placeholder of the sgl_kernel stand-in: the trace file stays empty. Not vacuously: the
    engine's scheduler and detokenizer processes carry the trace variable and import the
    stand-in, so a placeholder called there would have written to the file."""
    import psutil
    import sgl_kernel

    tiny_engine.generate(PROMPTS, {"temperature": 0.7, "max_new_tokens": 8})
    sglang_pids = {p.pid for p in psutil.Process().children(recursive=True)
                   if p.name().startswith("sglang::")}  # SGLang titles its processes
    assert len(sglang_pids) >= 2  # the scheduler and the detokenizer
    events = [line.split(" ", 1) for line in open(standin_trace).read().splitlines()]
    assert sglang_pids <= {int(pid) for pid, event in events if event == sgl_kernel.IMPORTED}
    assert [event for _, event in events if event != sgl_kernel.IMPORTED] == []
