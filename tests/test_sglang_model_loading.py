"""MegrezMoeForCausalLM built in-process (a world of one, gloo): structure, weights, memory."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megrez_sglang.model.config import MegrezMoeConfig


def build(path: str, dtype=torch.bfloat16):
    from megrez_sglang.sglang_models.megrez_moe import MegrezMoeForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return MegrezMoeForCausalLM(MegrezMoeConfig.from_pretrained(path))
    finally:
        torch.set_default_dtype(previous)


def checkpoint_tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / "model.safetensors")


def test_one_fused_moe_per_sharing_group(sglang_world, tiny_checkpoint):
    from sglang.srt.layers.moe.fused_moe_triton import FusedMoE

    model = build(tiny_checkpoint)
    layers = model.model.layers
    assert isinstance(layers[1].mlp.experts, FusedMoE)
    assert layers[2].mlp.experts is layers[1].mlp.experts is layers[3].mlp.experts
    assert layers[4].mlp.experts is layers[6].mlp.experts is not layers[1].mlp.experts
    assert "experts" in layers[1].mlp._modules and "experts" not in layers[2].mlp._modules
    names = [n for n, _ in model.named_parameters()]
    assert sum(".mlp.experts." in n for n in names) == 4  # w13 + w2 at owners 1 and 4
    # every layer its own router, bias and TopK
    gates = {id(layers[l].mlp.gate.e_score_correction_bias) for l in range(1, 7)}
    assert len(gates) == 6
    assert all(layers[l].mlp.gate.e_score_correction_bias.dtype == torch.float32 for l in range(1, 7))
    assert len({id(layers[l].mlp.topk) for l in range(1, 7)}) == 6


def test_loads_every_parameter_once_and_holds_each_group_once(sglang_world, tiny_checkpoint):
    model = build(tiny_checkpoint)
    tensors = checkpoint_tensors(tiny_checkpoint)
    model.load_weights(tensors.items())
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    layer2 = model.model.layers[2].mlp
    ckpt = tensors["model.layers.1.mlp.experts.5.down_proj.weight"]
    assert torch.equal(layer2.experts.w2_weight[5], ckpt)
    assert torch.equal(layer2.gate.e_score_correction_bias,
                       tensors["model.layers.2.mlp.gate.e_score_correction_bias"])
    # memory: unique parameter bytes == checkpoint bytes, but for the vocab rows padded to 64 and
    # the router weights, held in float32 (the checkpoint's bfloat16, 2 bytes more per value)
    config = model.config
    padded_rows = model.model.embed_tokens.weight.shape[0] - config.vocab_size
    padding = 2 * padded_rows * config.hidden_size * 2  # embed + lm_head, bf16
    router_upcast = 6 * config.n_routed_experts * config.hidden_size * 2  # 6 MoE layers
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())
    on_disk = sum(t.numel() * t.element_size() for t in tensors.values())
    assert loaded - padding - router_upcast == on_disk


def test_router_weight_is_held_in_float32_with_the_checkpoints_values(sglang_world, tiny_checkpoint):
    """Stored in float32 at load, so no forward casts it: the bfloat16 values exactly."""
    model = build(tiny_checkpoint)
    tensors = checkpoint_tensors(tiny_checkpoint)
    model.load_weights(tensors.items())
    gate = model.model.layers[5].mlp.gate
    assert gate.weight.dtype == torch.float32
    stored = tensors["model.layers.5.mlp.gate.weight"]
    assert stored.dtype == torch.bfloat16 and torch.equal(gate.weight, stored.float())
    x = torch.randn(3, model.config.hidden_size, dtype=torch.bfloat16)
    assert torch.equal(gate(x), x.float() @ stored.float().T)


def test_skips_rotary_buffers_and_extra_layers_with_one_log_line(sglang_world, tiny_checkpoint, caplog):
    """What every public loader of the real checkpoint skips: RoPE inv_freq buffers and layers
    numbered >= num_hidden_layers (7 here: extra next-token-prediction layers)."""
    tensors = checkpoint_tensors(tiny_checkpoint)
    extra = {
        "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8),
        "model.layers.6.self_attn.rotary_emb.inv_freq": torch.ones(8),
        "model.layers.7.mlp.gate.weight": torch.zeros(8, 64),
        "model.layers.7.eh_proj.weight": torch.zeros(64, 128),
        "model.layers.12.shared_head.norm.weight": torch.zeros(64),
    }
    model = build(tiny_checkpoint)
    with caplog.at_level("INFO", logger="megrez_sglang.sglang_models.megrez_moe"):
        model.load_weights([*tensors.items(), *extra.items()])
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == ["Megrez2 checkpoint: skipped 5 tensor(s) the model does not use: "
                     "2 rotary_emb.inv_freq buffers, 3 tensors of layers >= num_hidden_layers (7)"]
    assert torch.equal(model.model.layers[6].mlp.gate.weight,
                       tensors["model.layers.6.mlp.gate.weight"].float())


def test_nothing_skipped_logs_nothing(sglang_world, tiny_checkpoint, caplog):
    with caplog.at_level("INFO", logger="megrez_sglang.sglang_models.megrez_moe"):
        build(tiny_checkpoint).load_weights(checkpoint_tensors(tiny_checkpoint).items())
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]


@pytest.mark.parametrize("name, shape", [
    ("model.layers.6.self_attn.rotary_emb.cos_cached", (16, 16)),  # only inv_freq is skipped
    ("model.rotary_emb.inv_freq_scaled", (8,)),
    ("model.layers.6.mlp.gate.extra_weight", (8, 64)),  # layer 6 exists: strict
    ("model.mtp.0.norm.weight", (64,)),  # next-token layers only as model.layers.N, N >= 7
    ("lm_head.bias", (128,)),
])
def test_everything_else_unexpected_still_fails(sglang_world, tiny_checkpoint, name, shape):
    from megrez_sglang.sglang_models.megrez_moe import CheckpointMismatch

    tensors = checkpoint_tensors(tiny_checkpoint)
    tensors[name] = torch.zeros(shape)
    with pytest.raises(CheckpointMismatch, match=f"{name.replace('.', '[.]')}' .* has no place"):
        build(tiny_checkpoint).load_weights(tensors.items())


def test_config_values_that_were_guesses_come_from_the_checkpoint(sglang_world, checkpoints):
    """KV heads, rope_theta, rms_norm_eps, the dense width and the special-token ids are read
    from config.json (here all different from the defaults), by SGLang's model config and by the
    model it builds."""
    from sglang.srt.configs.model_config import ModelConfig

    path = checkpoints("other-guesses", **OTHER_GUESSES)
    served = ModelConfig(path)
    assert served.num_key_value_heads == 1
    assert OTHER_GUESSES["eos_token_id"] in served.hf_eos_token_id
    model = build(path)
    layer = model.model.layers[0]
    assert layer.self_attn.attn.tp_k_head_num == 1 and layer.self_attn.num_kv_heads == 1
    assert layer.self_attn.rotary_emb.base == 5e6
    assert layer.input_layernorm.variance_epsilon == 1e-6
    assert model.model.norm.variance_epsilon == 1e-6
    assert layer.mlp.gate_up_proj.weight.shape[0] == 2 * 160
    model.load_weights(checkpoint_tensors(path).items())  # and the weights fit those shapes


# Different from every default of the guessed fields (see config.GUESSED_FIELDS)
OTHER_GUESSES = dict(num_key_value_heads=1, rope_theta=5e6, rms_norm_eps=1e-6, intermediate_size=160,
                     eos_token_id=3)


def test_a_field_overridden_after_loading_is_refused_when_the_model_is_built(sglang_world, tiny_checkpoint):
    """--json-model-override-args sets fields on the config SGLang loaded, after its check: the
    model's constructor checks again (MegrezMoeConfig.check_supported)."""
    from megrez_sglang.sglang_models.megrez_moe import MegrezMoeForCausalLM

    config = MegrezMoeConfig.from_pretrained(tiny_checkpoint)
    config.moe_layer_freq = 2  # what SGLang's get_config does with model_override_args
    with pytest.raises(ValueError, match="^MegrezMoeConfig.moe_layer_freq: only 1 is supported"):
        MegrezMoeForCausalLM(config)


def test_attention_biases_load_into_the_stacked_projections(sglang_world, checkpoints):
    """attention_bias: the checkpoint's q/k/v biases fill qkv_proj's bias in that order, o_proj
    gets its own; the projections then equal the reference's (the builder draws non-zero biases)."""
    path = checkpoints("attention-bias", attention_bias=True)
    model = build(path, dtype=torch.float32)
    tensors = checkpoint_tensors(path)
    model.load_weights(tensors.items())
    attn = model.model.layers[3].self_attn
    prefix = "model.layers.3.self_attn"
    biases = [tensors[f"{prefix}.{p}_proj.bias"].float() for p in "qkvo"]
    assert min(float(b.abs().max()) for b in biases) > 0.02  # drawn with std 0.02
    assert torch.equal(attn.qkv_proj.bias, torch.cat(biases[:3]))
    assert torch.equal(attn.o_proj.bias, biases[3])
    x = torch.randn(5, model.config.hidden_size)
    expected = torch.cat([x @ tensors[f"{prefix}.{p}_proj.weight"].float().T + b
                          for p, b in zip("qkv", biases, strict=False)], dim=-1)
    torch.testing.assert_close(attn.qkv_proj(x)[0], expected)


ROUTING = [(method, scoring, norm, n_group)
           for method in ("noaux_tc", "group_limited_greedy", "greedy")
           for scoring in ("sigmoid", "softmax") for norm in (True, False) for n_group in (1, 4)
           if not (method == "noaux_tc" and scoring == "softmax")
           and not (method == "greedy" and n_group > 1)]


@pytest.mark.parametrize("method, scoring, norm, n_group", ROUTING)
def test_routing_matches_the_reference_for_every_supported_combination(sglang_world, method, scoring,
                                                                       norm, n_group):
    """SGLang's TopK, as the sparse block configures it, picks the reference's experts with the
    reference's weights for every topk_method x scoring_func x norm_topk_prob x grouping that
    MegrezMoeConfig accepts (the others are refused there)."""
    from megrez_sglang.model.reference import select_experts
    from megrez_sglang.sglang_models.megrez_moe import MegrezMoeSparseBlock

    config = MegrezMoeConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                             num_hidden_layers=3, n_routed_experts=16, num_experts_per_tok=4,
                             moe_intermediate_size=8, n_shared_experts=1, topk_method=method,
                             scoring_func=scoring, norm_topk_prob=norm, n_group=n_group,
                             topk_group=min(2, n_group))
    torch.manual_seed(0)
    block = MegrezMoeSparseBlock(config, 1, None, None, "model.layers.1.mlp")
    bias = block.gate.e_score_correction_bias
    if bias is not None:
        bias.data.normal_(0.0, 0.2)
    logits = 2 * torch.randn(64, 16)
    got = block.topk(torch.randn(64, 16), logits)
    weights, ids = select_experts(logits, bias, config)
    ids, order = ids.sort(-1)
    got_ids, got_order = got.topk_ids.long().sort(-1)
    assert torch.equal(got_ids, ids)
    torch.testing.assert_close(got.topk_weights.gather(1, got_order), weights.gather(1, order))


@pytest.mark.parametrize("setting, value, message", [
    ("enable_eplb", True, "does not support --enable-eplb"),
    ("init_expert_location", "/tmp/placement.json", "--init-expert-location '/tmp/placement.json'"),
    ("ep_dispatch_algorithm", "static", "--ep-dispatch-algorithm 'static'"),
    ("expert_distribution_recorder_mode", "stat", "--expert-distribution-recorder-mode 'stat'"),
    ("ep_num_redundant_experts", 2, "redundant experts \\(--ep-num-redundant-experts 2\\)"),
])
def test_per_layer_expert_placement_options_are_refused(sglang_world, tiny_checkpoint, setting, value,
                                                        message):
    """One expert pool serves a whole sharing group: SGLang's per-layer expert placement
    (EPLB and what feeds it) is refused at model construction, naming the option."""
    from sglang.srt.runtime_context import get_exec

    with get_exec().moe.override(**{setting: value}):
        with pytest.raises(NotImplementedError, match=message) as refused:
            build(tiny_checkpoint)
    assert "one expert pool serves each group of 3 consecutive MoE layers" in str(refused.value)
    build(tiny_checkpoint)  # the default settings build


def test_pipeline_parallelism_and_two_batch_overlap_are_refused():
    from types import SimpleNamespace

    from megrez_sglang.sglang_models.megrez_moe import unsupported_setup

    defaults = SimpleNamespace(enable_eplb=False, ep_num_redundant_experts=0, init_expert_location="trivial",
                               ep_dispatch_algorithm=None, expert_distribution_recorder_mode=None)
    assert unsupported_setup(1, defaults, False) is None
    assert "pipeline parallelism" in unsupported_setup(2, defaults, False)
    assert "two-batch overlap" in unsupported_setup(1, defaults, True)


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.pop("model.layers.5.mlp.shared_experts.up_proj.weight"),
     "model.layers.5.mlp.shared_experts.gate_up_proj.weight \\(written 1 of 2 pieces\\)"),
    (lambda t: t.pop("model.layers.4.mlp.experts.7.down_proj.weight"),
     "model.layers.4.mlp.experts.w2_weight \\(written 7 of 8 pieces\\)"),
    (lambda t: t.update({"model.layers.2.mlp.experts.0.up_proj.weight":
                         t["model.layers.1.mlp.experts.0.up_proj.weight"]}),
     "layer 2 is not the owner of its expert-sharing group"),
    (lambda t: t.update({"model.layers.3.mlp.gate.bias": torch.zeros(8)}),
     "'model.layers.3.mlp.gate.bias' \\(8,\\) has no place"),
    (lambda t: t.update({"model.layers.3.mlp.gate.weight": torch.zeros(9, 64)}),
     "'model.layers.3.mlp.gate.weight' has shape \\(9, 64\\), but this config expects \\(8, 64\\)"),
    (lambda t: t.update({"model.layers.2.self_attn.q_proj.weight": torch.zeros(60, 64)}),
     "'model.layers.2.self_attn.q_proj.weight' has shape \\(60, 64\\), but this config expects \\(64, 64\\)"),
])
def test_bad_checkpoint_fails_naming_the_tensor(sglang_world, tiny_checkpoint, mutate, message):
    from megrez_sglang.sglang_models.megrez_moe import CheckpointMismatch

    tensors = checkpoint_tensors(tiny_checkpoint)
    mutate(tensors)
    with pytest.raises(CheckpointMismatch, match=message):
        build(tiny_checkpoint).load_weights(tensors.items())


def test_a_tensor_given_twice_is_reported(sglang_world, tiny_checkpoint):
    from megrez_sglang.sglang_models.megrez_moe import CheckpointMismatch

    tensors = list(checkpoint_tensors(tiny_checkpoint).items())
    tensors.append(tensors[-1])
    with pytest.raises(CheckpointMismatch, match="written 2 of 1 pieces"):
        build(tiny_checkpoint).load_weights(tensors)
