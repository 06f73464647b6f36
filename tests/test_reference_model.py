"""The plain-PyTorch reference: routing against hand computations, pre-gating, expert sharing."""

import math

import pytest
import torch

from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.model.reference import MegrezMoeForCausalLM, MoE, select_experts

SMALL = dict(vocab_size=300, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
             num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
             pad_token_id=0, eos_token_id=1, max_position_embeddings=256)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_bias_changes_the_selection_but_not_the_weights():
    c = MegrezMoeConfig(**{**SMALL, "n_routed_experts": 4, "norm_topk_prob": False})
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    logits = torch.logit(scores)
    w, ids = select_experts(logits, torch.zeros(4), c)
    assert sorted(ids[0].tolist()) == [0, 1]
    w, ids = select_experts(logits, torch.tensor([0.0, 0.0, 0.2, 0.0]), c)  # 0.7 + 0.2 > 0.8
    order = ids[0].argsort()
    assert ids[0][order].tolist() == [0, 2]
    assert torch.allclose(w[0][order], torch.tensor([0.9, 0.7]))  # unbiased sigmoid scores


def test_norm_topk_prob_renormalises_the_chosen_scores():
    c = MegrezMoeConfig(**{**SMALL, "n_routed_experts": 4})
    w, ids = select_experts(torch.logit(torch.tensor([[0.9, 0.6, 0.2, 0.1]])), torch.zeros(4), c)
    order = ids[0].argsort()
    assert ids[0][order].tolist() == [0, 1]
    assert torch.allclose(w[0][order], torch.tensor([0.9 / 1.5, 0.6 / 1.5]))


def test_grouped_topk_masks_the_losing_groups():
    # 8 experts in 4 groups of 2; a group scores the sum of its two best biased scores.
    c = MegrezMoeConfig(**{**SMALL, "n_group": 4, "topk_group": 2})
    scores = torch.tensor([[0.95, 0.05, 0.6, 0.6, 0.5, 0.5, 0.1, 0.1]])
    # group sums: [1.0, 1.2, 1.0, 0.2] -> groups 1 and (0 or 2 tie-broken); make 2 win clearly:
    scores[0, 4:6] = torch.tensor([0.55, 0.55])  # group 2 sums 1.1 > group 0's 1.0
    w, ids = select_experts(torch.logit(scores), torch.zeros(8), c)
    # expert 0 has the best single score, but its group lost
    assert sorted(ids[0].tolist()) == [2, 3]
    c1 = MegrezMoeConfig(**SMALL)  # no groups: expert 0 wins
    _, ids1 = select_experts(torch.logit(scores), torch.zeros(8), c1)
    assert 0 in ids1[0].tolist()


def test_softmax_scoring_with_greedy_selection():
    c = MegrezMoeConfig(**{**SMALL, "n_routed_experts": 4, "topk_method": "greedy",
                           "scoring_func": "softmax", "norm_topk_prob": False})
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    w, ids = select_experts(logits, None, c)
    order = ids[0].argsort()
    assert ids[0][order].tolist() == [0, 1]
    assert torch.allclose(w[0][order], logits.softmax(-1)[0, :2])


@pytest.mark.parametrize("rsf", [1.0, 2.5])
def test_routed_scaling_factor_is_applied_exactly_once(rsf):
    torch.manual_seed(0)
    c = MegrezMoeConfig(**{**SMALL, "n_shared_experts": 0, "routed_scaling_factor": rsf})
    moe = MoE(c, is_owner=True)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    u = torch.randn(5, c.hidden_size)
    weights, ids = moe.gate(u)
    expected = torch.zeros_like(u)
    for t in range(5):
        for k in range(c.num_experts_per_tok):
            expected[t] += weights[t, k] * moe.experts[ids[t, k]](u[t:t + 1])[0]
    assert torch.allclose(moe(u, u, moe.experts), rsf * expected, atol=1e-5)


def make_model(**overrides) -> MegrezMoeForCausalLM:
    torch.manual_seed(0)
    model = MegrezMoeForCausalLM(MegrezMoeConfig(**{**SMALL, **overrides})).eval()
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.weight.normal_(0, 1.0)
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.2)
    return model


def routed_ids(layer, x, pre_gate_hidden):
    captured = {}
    handle = layer.mlp.gate.register_forward_hook(lambda m, i, out: captured.update(ids=out[1]))
    positions = torch.arange(x.shape[1])[None]
    mask = torch.ones(1, 1, x.shape[1], x.shape[1], dtype=torch.bool).tril()
    with torch.no_grad():
        layer(x, positions, mask, None, pre_gate_hidden, layer.mlp.experts)
    handle.remove()
    return captured["ids"].sort(-1).values


@pytest.mark.parametrize("pre_gate", [True, False])
def test_pre_gate_routes_on_the_previous_layers_post_attention_norm_output(pre_gate):
    model = make_model(pre_gate=pre_gate, experts_shared_frequency=1)
    layer = model.model.layers[2]
    x = torch.randn(1, 6, SMALL["hidden_size"])
    u_prev = torch.randn(1, 6, SMALL["hidden_size"])
    perturbed = routed_ids(layer, x, u_prev + torch.randn_like(u_prev))
    unperturbed = routed_ids(layer, x, u_prev)
    assert (perturbed != unperturbed).any().item() is pre_gate


def test_first_moe_layer_routes_on_the_dense_layers_output():
    model = make_model()
    seen = {}
    model.model.layers[0].post_attention_layernorm.register_forward_hook(
        lambda m, i, out: seen.update(u0=out))
    model.model.layers[1].mlp.gate.register_forward_hook(lambda m, i, out: seen.update(g1=i[0]))
    with torch.no_grad():
        model(torch.tensor([[5, 6, 7]]))
    assert torch.equal(seen["g1"], seen["u0"].reshape(seen["g1"].shape))


def test_layers_of_a_group_use_the_same_expert_parameters():
    model = make_model()
    owner_experts = model.model.layers[1].mlp.experts
    for layer_id in (1, 2, 3):
        assert model.model.experts_of(layer_id) is owner_experts
    assert model.model.experts_of(4) is model.model.layers[4].mlp.experts is not owner_experts
    assert model.model.layers[2].mlp.experts is None and model.model.layers[3].mlp.experts is None
    # and layer 3 really computes with them: changing the owner's weights changes layer 3
    x = torch.randn(1, 4, SMALL["hidden_size"])
    layer3 = model.model.layers[3]
    positions, mask = torch.arange(4)[None], torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    with torch.no_grad():
        before, _ = layer3(x, positions, mask, None, x, model.model.experts_of(3))
        for p in owner_experts.parameters():
            p.mul_(2)
        after, _ = layer3(x, positions, mask, None, x, model.model.experts_of(3))
    assert not torch.allclose(before, after)


def expected_tensor_names(c: MegrezMoeConfig) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for l in range(c.num_hidden_layers):
        p = f"model.layers.{l}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        if l < c.first_k_dense_replace:
            names |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
            continue
        names |= {p + "mlp.gate.weight", p + "mlp.gate.e_score_correction_bias"}
        names |= {p + f"mlp.shared_experts.{x}_proj.weight" for x in ("gate", "up", "down")}
        if (l - c.first_k_dense_replace) % c.experts_shared_frequency == 0:
            names |= {p + f"mlp.experts.{e}.{x}_proj.weight"
                      for e in range(c.n_routed_experts) for x in ("gate", "up", "down")}
    return names


def test_state_dict_has_exactly_the_real_checkpoint_names():
    model = make_model()
    assert set(model.state_dict()) == expected_tensor_names(model.config)
    assert not any(k.startswith("model.layers.2.mlp.experts.") for k in model.state_dict())


def test_real_config_has_2262_tensors():
    assert len(expected_tensor_names(MegrezMoeConfig())) == 2262
    with torch.device("meta"):
        model = MegrezMoeForCausalLM(MegrezMoeConfig())
    assert set(model.state_dict()) == expected_tensor_names(model.config)


def test_generate_with_kv_cache_equals_recomputing_the_whole_sequence():
    model = make_model()
    ids = torch.tensor([[11, 12, 13, 14, 15]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
        full = ids
        for _ in range(10):
            full = torch.cat([full, model(full).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, full)


def test_batched_generate_with_left_padding_equals_one_at_a_time():
    model = make_model()
    prompts = [[11, 12, 13, 14, 15], [21, 22]]
    with torch.no_grad():
        single = [model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
        batch = torch.tensor([prompts[0], [0, 0, 0] + prompts[1]])  # left padding
        mask = torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])
        out = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    assert [out[0, 5:].tolist(), out[1, 5:].tolist()] == single


def test_attention_dropout_acts_in_training_only():
    """attention_dropout drops attention weights while training (train_tiny) and never at
    inference, where the reference and SGLang compute the same thing for every value."""
    torch.manual_seed(0)
    plain = MegrezMoeForCausalLM(MegrezMoeConfig(**SMALL)).eval()
    dropout = MegrezMoeForCausalLM(MegrezMoeConfig(**SMALL, attention_dropout=0.5)).eval()
    dropout.load_state_dict(plain.state_dict())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.equal(dropout(ids).logits, plain(ids).logits)
        dropout.train()
        assert not torch.allclose(dropout(ids).logits, plain(ids).logits)


def test_head_dim_need_not_be_hidden_size_over_heads():
    model = MegrezMoeForCausalLM(MegrezMoeConfig(**{**SMALL, "head_dim": 12}))
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (4 * 12, SMALL["hidden_size"])
    with torch.no_grad():
        assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, SMALL["vocab_size"])
