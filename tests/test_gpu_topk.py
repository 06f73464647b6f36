"""The routing a CUDA machine runs, checked here without one (docs/gpu-topk.md).

SGLang's TopK on CUDA (``TopK.forward_cuda`` -> ``select_experts`` -> ``biased_grouped_topk_gpu``,
sglang/srt/layers/moe/topk.py) picks one of two kernels: FlashInfer's ``fused_topk_deepseek`` or
SGLang's Triton router ``moe_fused_gate``. These tests run SGLang's own CUDA dispatch code on the
arguments the model class gives its TopK, with ``_is_cuda`` switched on and the kernels replaced:
FlashInfer's by FlashInfer's own torch reference of it (``_fused_topk_deepseek_reference`` in
flashinfer/trace/templates/sampling.py, the "status:verified" reference its kernel tests use),
the Triton router by a recorder of its arguments (it runs for real in the GPU check's ``topk``
step, and under Triton's interpreter in that step's CPU test). What the real kernels compute is
the GPU check's job; what SGLang asks of them, and what the model class does with the answer, is
these tests'.
"""

import pytest
import torch

from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.model.routing_peers import compare_with_reference

HIDDEN, EXPERTS, TOP_K = 32, 64, 6  # Megrez2's 64 experts, top-6; a small hidden size


def megrez_config(**overrides) -> MegrezMoeConfig:
    return MegrezMoeConfig(hidden_size=HIDDEN, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=16, num_hidden_layers=3, n_routed_experts=EXPERTS,
                           num_experts_per_tok=TOP_K, moe_intermediate_size=16, n_shared_experts=1,
                           **overrides)


class CudaRouting:
    """SGLang's CUDA routing dispatch on CPU tensors; records which kernel it called, with what."""

    def __init__(self, monkeypatch, flashinfer_weights_from_biased_scores: bool = False):
        from flashinfer.trace.templates.sampling import _fused_topk_deepseek_reference
        from sglang.kernels.ops.moe import moe_fused_gate as triton_router
        from sglang.srt.layers.moe import topk as sglang_topk

        self.calls: list[tuple[str, tuple, dict]] = []

        def flashinfer(scores, bias, n_group, topk_group, topk, routed_scaling_factor,
                       topk_values, topk_indices, launch_with_pdl=True):
            self.calls.append(("flashinfer", (n_group, topk_group, topk, routed_scaling_factor),
                               {"bias_dtype": bias.dtype, "scores_dtype": scores.dtype}))
            _fused_topk_deepseek_reference(scores, bias, n_group, topk_group, topk,
                                           routed_scaling_factor, topk_values, topk_indices)
            if flashinfer_weights_from_biased_scores:  # negative control: bias in the weights
                chosen = (scores.sigmoid() + bias).gather(1, topk_indices.long())
                topk_values.copy_(chosen / chosen.sum(-1, keepdim=True) * routed_scaling_factor)

        def triton_router_recorder(*args, **kwargs):
            self.calls.append(("triton", args, kwargs))
            raise TritonRouterCalled

        monkeypatch.setattr(sglang_topk, "_is_cuda", True)
        # defined only on CUDA hosts (topk.py, the `if _is_cuda:` import of FlashInfer)
        monkeypatch.setattr(sglang_topk, "fused_topk_deepseek", flashinfer, raising=False)
        # on a CUDA host this is the module's binding (topk.py, after biased_grouped_topk_cpu)
        monkeypatch.setattr(sglang_topk, "biased_grouped_topk", sglang_topk.biased_grouped_topk_gpu)
        monkeypatch.setattr(triton_router, "moe_fused_gate", triton_router_recorder)

    def kernel(self) -> str:
        assert len(self.calls) == 1, self.calls
        return self.calls[0][0]


class TritonRouterCalled(Exception):
    pass


def sparse_block(config: MegrezMoeConfig, seed: int = 0):
    """The model class's MoE block with random weights and correction bias, its TopK on the CUDA
    branch (forward_cuda, as SGLang's dispatch picks on a GPU)."""
    from megrez_sglang.sglang_models.megrez_moe import MegrezMoeSparseBlock

    torch.manual_seed(seed)
    block = MegrezMoeSparseBlock(config, 1, None, None, "model.layers.1.mlp")
    for p in block.parameters():
        p.data.normal_(0.0, 0.3)
    # a bias of the size of the sigmoid scores' gaps, so that it changes selections
    block.gate.e_score_correction_bias.data.normal_(0.0, 0.1)
    block.topk._forward_method = block.topk.forward_cuda
    return block


def routing_inputs(tokens: int = 64, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, HIDDEN, generator=generator),
            2 * torch.randn(tokens, EXPERTS, generator=generator))


# (config overrides, the kernel SGLang 0.5.23's biased_grouped_topk_gpu picks on CUDA)
DISPATCH = [
    ({}, "triton"),  # shipped: topk_group * n_group = 1 < top-6 rules FlashInfer out
    (dict(norm_topk_prob=False), "triton"),
    (dict(n_group=4, topk_group=2), "flashinfer"),
    (dict(n_group=4, topk_group=2, norm_topk_prob=False), "triton"),  # FlashInfer always renormalizes
    (dict(n_group=2, topk_group=1), "triton"),  # 2 * 1 < 6
    (dict(n_group=8, topk_group=1), "flashinfer"),  # 8 * 1 >= 6, 8 experts a group
]


@pytest.mark.parametrize("overrides, kernel", DISPATCH, ids=lambda v: str(v))
def test_sglangs_cuda_dispatch_picks_this_kernel_for_the_model_class_topk(sglang_world, monkeypatch,
                                                                            overrides, kernel):
    routing = CudaRouting(monkeypatch)
    block = sparse_block(megrez_config(**overrides))
    hidden, logits = routing_inputs()
    try:
        block.topk(hidden, block.gate(hidden))
    except TritonRouterCalled:
        pass
    assert routing.kernel() == kernel


@pytest.mark.parametrize("overrides", [
    {}, dict(routed_scaling_factor=2.5), dict(norm_topk_prob=False, routed_scaling_factor=2.5),
    dict(n_group=2, topk_group=1, routed_scaling_factor=2.5),
], ids=str)
def test_the_triton_router_is_asked_for_the_references_semantics(sglang_world, monkeypatch, overrides):
    """On the Triton branch the model class's TopK asks for no scaling factor (the model applies
    it once, after the experts), the config's renormalization and grouping, a float32 bias."""
    routing = CudaRouting(monkeypatch)
    config = megrez_config(**overrides)
    block = sparse_block(config)
    hidden, _ = routing_inputs()
    with pytest.raises(TritonRouterCalled):
        block.topk(hidden, block.gate(hidden))
    [(kernel, args, kwargs)] = routing.calls
    assert kernel == "triton"
    scores, bias, topk = args
    assert scores.dtype == torch.float32 and bias.dtype == torch.float32
    assert torch.equal(bias, block.gate.e_score_correction_bias.float())
    assert topk == TOP_K and kwargs["scoring_func"] == "sigmoid"
    assert kwargs["renormalize"] is config.norm_topk_prob
    assert kwargs["routed_scaling_factor"] == 1.0
    assert not kwargs["apply_routed_scaling_factor_on_output"]
    assert (kwargs.get("num_expert_group", 1), kwargs.get("topk_group", 1)) == (config.n_group,
                                                                              config.topk_group)


FLASHINFER_CONFIGS = [dict(n_group=4, topk_group=2), dict(n_group=8, topk_group=1)]


@pytest.mark.parametrize("rsf", [1.0, 2.5])
@pytest.mark.parametrize("overrides", FLASHINFER_CONFIGS, ids=str)
def test_the_flashinfer_branch_routes_like_the_reference(sglang_world, monkeypatch, overrides, rsf):
    """FlashInfer's kernel (its documented semantics) on the arguments SGLang derives from the
    model class's TopK: the reference's experts and weights, no scaling factor folded in."""
    routing = CudaRouting(monkeypatch)
    config = megrez_config(routed_scaling_factor=rsf, **overrides)
    block = sparse_block(config)
    hidden, logits = routing_inputs(tokens=256)
    out = block.topk(hidden, logits)
    assert routing.kernel() == "flashinfer"
    assert routing.calls[0][1] == (config.n_group, config.topk_group, TOP_K, 1.0)
    agreement = compare_with_reference(logits, block.gate.e_score_correction_bias, config,
                                       out.topk_weights, out.topk_ids)
    assert agreement.identical_sets == 256 and agreement.agrees
    assert agreement.max_weight_diff < 1e-6
    # the bias changed selections here, or this would not show it is used for selection only
    unbiased = compare_with_reference(logits, None, config, out.topk_weights, out.topk_ids)
    assert unbiased.mismatched


def reference_moe(block, config: MegrezMoeConfig):
    """The reference model's MoE layer holding the block's weights."""
    from megrez_sglang.model.reference import MoE

    moe = MoE(config, is_owner=True)
    width = config.moe_intermediate_size
    w13, w2 = block.experts.w13_weight.data, block.experts.w2_weight.data
    for e, expert in enumerate(moe.experts):
        expert.gate_proj.weight.data = w13[e, :width].clone()
        expert.up_proj.weight.data = w13[e, width:].clone()
        expert.down_proj.weight.data = w2[e].clone()
    shared_width = width * config.n_shared_experts
    gate_up = block.shared_experts.gate_up_proj.weight.data
    moe.shared_experts.gate_proj.weight.data = gate_up[:shared_width].clone()
    moe.shared_experts.up_proj.weight.data = gate_up[shared_width:].clone()
    moe.shared_experts.down_proj.weight.data = block.shared_experts.down_proj.weight.data.clone()
    moe.gate.weight.data = block.gate.weight.data.clone()
    moe.gate.e_score_correction_bias.data = block.gate.e_score_correction_bias.data.clone()
    return moe


def flashinfer_branch_block_output(monkeypatch, defect: str | None = None):
    """The model class's MoE block (routed scaling factor 2.5, FlashInfer's branch) and the
    reference MoE layer on the same input: (block output, reference output)."""
    routing = CudaRouting(monkeypatch, flashinfer_weights_from_biased_scores=defect == "bias in weights")
    config = megrez_config(routed_scaling_factor=2.5, n_group=4, topk_group=2)
    block = sparse_block(config)
    if defect == "double scaling":  # the publisher's demo: TopK folds the factor in, then the model
        block.topk.topk_config.routed_scaling_factor = config.routed_scaling_factor
        block.topk.topk_config.apply_routed_scaling_factor_on_output = True
    hidden, _ = routing_inputs(tokens=32, seed=1)
    router_input, _ = routing_inputs(tokens=32, seed=2)  # pre-gated: the previous layer's u
    with torch.no_grad():
        got = block(hidden, router_input)
        moe = reference_moe(block, config)
        expected = moe(hidden, router_input, moe.experts)
    assert routing.kernel() == "flashinfer"
    return got, expected


def test_on_the_flashinfer_branch_the_block_equals_the_reference_moe(sglang_world, monkeypatch):
    got, expected = flashinfer_branch_block_output(monkeypatch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("defect", ["double scaling", "bias in weights"])
def test_negative_control_a_routing_defect_on_that_branch_is_caught(sglang_world, monkeypatch, defect):
    """The comparison above fails for the publisher's double scaling and for a kernel that put the
    correction bias into the weights."""
    got, expected = flashinfer_branch_block_output(monkeypatch, defect)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flashinfers_grouping_with_every_group_kept_is_the_shipped_ungrouped_routing():
    """FlashInfer refuses one group with top-6 (topk_group * n_group >= top_k,
    fused_routing_dsv3.py), so the GPU check feeds the shipped config's ungrouped routing to it
    as n_group 4 / topk_group 4: every group kept, the same selection."""
    from flashinfer.trace.templates.sampling import _fused_topk_deepseek_reference

    config = megrez_config()
    _, logits = routing_inputs(tokens=256)
    bias = 0.1 * torch.randn(EXPERTS, generator=torch.Generator().manual_seed(2))
    weights = torch.empty(256, TOP_K)
    ids = torch.empty(256, TOP_K, dtype=torch.int32)
    _fused_topk_deepseek_reference(logits, bias, 4, 4, TOP_K, 1.0, weights, ids)
    agreement = compare_with_reference(logits, bias, config, weights, ids)
    assert agreement.identical_sets == 256 and agreement.max_weight_diff < 1e-6


def test_the_comparison_counts_ties_and_flags_a_wrong_expert_or_a_scaled_weight():
    """compare_with_reference (the GPU check's yardstick) fails a route that picks another expert or
    folds a scaling factor into the weights, and forgives a swap between exactly tied experts."""
    from megrez_sglang.model.reference import select_experts

    config = megrez_config()
    _, logits = routing_inputs(tokens=8)
    bias = torch.zeros(EXPERTS)
    weights, ids = select_experts(logits, bias, config)
    assert compare_with_reference(logits, bias, config, weights, ids).identical_sets == 8
    scaled = compare_with_reference(logits, bias, config, 2.5 * weights, ids)
    assert scaled.agrees and scaled.max_weight_diff > 0.1
    wrong = ids.clone()
    wrong[3, -1] = next(e for e in range(EXPERTS) if e not in ids[3])
    assert compare_with_reference(logits, bias, config, weights, wrong).mismatched == [3]
    tied = logits.clone()
    outside = next(e for e in range(EXPERTS) if e not in ids[5])
    tied[5, outside] = tied[5, ids[5, -1]]  # an unselected expert exactly as good as one selected
    _, tied_ids = select_experts(tied, bias, config)
    [chosen] = [e for e in (outside, int(ids[5, -1])) if e in tied_ids[5]]
    swapped = tied_ids.clone()
    swapped[5][tied_ids[5] == chosen] = outside + int(ids[5, -1]) - chosen  # the other of the two
    swap = compare_with_reference(tied, bias, config, weights, swapped)
    assert swap.tie_swaps == 1 and swap.agrees and swap.identical_sets == 7
