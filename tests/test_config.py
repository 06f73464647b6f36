"""MegrezMoeConfig: the real model's defaults, round trips through transformers, validation."""

import json

import pytest
from transformers import AutoConfig

from megrez_sglang.config import MegrezMoeConfig


def test_defaults_are_the_real_model():
    c = MegrezMoeConfig()
    assert (c.hidden_size, c.num_hidden_layers, c.n_routed_experts, c.num_experts_per_tok) == (
        2048, 31, 64, 6)
    assert (c.n_shared_experts, c.experts_shared_frequency, c.first_k_dense_replace) == (4, 3, 1)
    assert (c.moe_intermediate_size, c.intermediate_size, c.vocab_size) == (1408, 10944, 128880)
    assert c.pre_gate is True and c.topk_method == "noaux_tc" and c.scoring_func == "sigmoid"
    assert c.rope_parameters == {"rope_theta": 1_000_000.0, "rope_type": "default"}


def test_owner_layers_of_the_real_model():
    c = MegrezMoeConfig()
    assert [l for l in range(31) if c.is_owner_layer(l)] == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]
    assert [c.owner_layer(l) for l in (1, 2, 3, 4, 29, 30)] == [1, 1, 1, 4, 28, 28]
    assert c.num_expert_groups == 10
    with pytest.raises(ValueError, match="layer 0 is dense"):
        c.owner_layer(0)


def test_round_trip_through_save_pretrained_and_autoconfig(tmp_path):
    c = MegrezMoeConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                        routed_scaling_factor=2.5, pre_gate=False, rope_theta=5e6)
    c.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MegrezMoeConfig
    def fields(config):
        return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}

    assert fields(loaded) == fields(c)
    assert loaded.rope_parameters["rope_theta"] == 5e6


def test_real_layout_with_auto_map_loads_without_remote_code(tmp_path):
    c = MegrezMoeConfig(num_key_value_heads=2, rope_theta=5e6)
    legacy = c.legacy_dict()
    assert "auto_map" in legacy and legacy["rope_scaling"] is None and "rope_parameters" not in legacy
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    loaded = AutoConfig.from_pretrained(tmp_path)  # trust_remote_code not given
    assert type(loaded) is MegrezMoeConfig
    assert loaded.num_key_value_heads == 2 and loaded.rope_parameters["rope_theta"] == 5e6
    assert loaded.legacy_dict() == legacy


@pytest.mark.parametrize("fields, message", [
    (dict(num_attention_heads=16, num_key_value_heads=3),
     "num_attention_heads \\(16\\) must be divisible by num_key_value_heads \\(3\\)"),
    (dict(num_experts_per_tok=65), "top-k \\(65\\) is larger than the number of routed experts \\(64\\)"),
    (dict(n_group=2, topk_group=3), "topk_group \\(3\\) is larger than n_group \\(2\\)"),
    (dict(n_group=3), "n_routed_experts \\(64\\) must be divisible by n_group \\(3\\)"),
    (dict(scoring_func="tanh"), "scoring_func: unknown 'tanh'"),
    (dict(topk_method="random"), "topk_method: unknown 'random'"),
    (dict(topk_method="noaux_tc", scoring_func="softmax"), "noaux_tc' is defined on sigmoid"),
    (dict(experts_shared_frequency=0), "experts_shared_frequency: must be >= 1, got 0"),
    (dict(n_group=8, topk_group=1, num_experts_per_tok=9),
     "hold only 8 experts, fewer than num_experts_per_tok \\(9\\)"),
    (dict(n_group=4, topk_method="greedy"), "needs topk_method 'noaux_tc' or 'group_limited_greedy'"),
    (dict(moe_layer_freq=2), "moe_layer_freq: only 1 is supported"),
    (dict(first_k_dense_replace=32), "first_k_dense_replace: must be in \\[0, num_hidden_layers=31\\]"),
    (dict(hidden_act="gelu"), "hidden_act: only 'silu'"),
    (dict(routed_scaling_factor=0.0), "routed_scaling_factor: must be > 0"),
    (dict(num_key_value_heads=0), "num_key_value_heads: must be >= 1"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "only plain RoPE"),
])
def test_invalid_config_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        MegrezMoeConfig(**fields)


def test_a_config_json_lacking_a_guessed_field_warns_naming_it(tmp_path, caplog):
    legacy = MegrezMoeConfig().legacy_dict()
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    with caplog.at_level("WARNING", logger="megrez_sglang.config"):
        AutoConfig.from_pretrained(tmp_path)
    assert caplog.records == []  # every field present: nothing guessed
    del legacy["rms_norm_eps"], legacy["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    with caplog.at_level("WARNING", logger="megrez_sglang.config"):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        "Megrez2 config.json has no rope_theta, rms_norm_eps: using the guessed default(s) "
        "rope_theta=1000000.0, rms_norm_eps=1e-05"]
    assert loaded.rms_norm_eps == 1e-5
