"""MegrezMoeConfig: the real model's defaults, round trips through transformers, validation, and
the refusal of values the models do not implement on every path that loads a config."""

import json
import shutil

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from megrez_sglang.model.build_checkpoint import main as build_checkpoint_main
from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.model.model_path import ModelPathError, resolve_model_path


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


# The real checkpoint's config.json names its remote code (it ships these files); ours do not.
REAL_AUTO_MAP = {
    "AutoConfig": "configuration_megrez_moe.MegrezMoeConfig",
    "AutoModel": "modeling_megrez_moe.MegrezMoeModel",
    "AutoModelForCausalLM": "modeling_megrez_moe.MegrezMoeForCausalLM",
}


def test_legacy_layout_names_no_remote_code_and_loads_back(tmp_path):
    c = MegrezMoeConfig(num_key_value_heads=2, rope_theta=5e6)
    legacy = c.legacy_dict()
    assert "auto_map" not in legacy
    assert legacy["rope_scaling"] is None and "rope_parameters" not in legacy
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MegrezMoeConfig
    assert loaded.num_key_value_heads == 2 and loaded.rope_parameters["rope_theta"] == 5e6
    assert loaded.legacy_dict() == legacy


def test_the_real_checkpoints_auto_map_is_ignored_without_remote_code(tmp_path):
    legacy = {**MegrezMoeConfig(num_key_value_heads=2).legacy_dict(), "auto_map": REAL_AUTO_MAP}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    (tmp_path / "configuration_megrez_moe.py").write_text("raise RuntimeError('remote code ran')\n")
    loaded = AutoConfig.from_pretrained(tmp_path)  # trust_remote_code not given: no question
    assert type(loaded) is MegrezMoeConfig and loaded.num_key_value_heads == 2


@pytest.mark.parametrize("fields, message", [
    (dict(num_attention_heads=16, num_key_value_heads=3),
     "num_attention_heads \\(16\\) must be divisible by num_key_value_heads \\(3\\)"),
    (dict(num_experts_per_tok=65), "top-k \\(65\\) is larger than the number of routed experts \\(64\\)"),
    (dict(n_group=2, topk_group=3), "topk_group \\(3\\) is larger than n_group \\(2\\)"),
    (dict(n_group=3), "n_routed_experts \\(64\\) must be divisible by n_group \\(3\\)"),
    (dict(scoring_func="tanh"), "scoring_func: unknown 'tanh'"),
    (dict(topk_method="random"), "topk_method: unknown 'random'"),
    (dict(topk_method="noaux_tc", scoring_func="softmax"), "noaux_tc' is defined on sigmoid"),
    (dict(experts_shared_frequency=0), "experts_shared_frequency: must be an integer >= 1, got 0"),
    (dict(n_group=8, topk_group=1, num_experts_per_tok=9),
     "hold only 8 experts, fewer than num_experts_per_tok \\(9\\)"),
    (dict(n_group=4, topk_method="greedy"), "needs topk_method 'noaux_tc' or 'group_limited_greedy'"),
    (dict(moe_layer_freq=2), "moe_layer_freq: only 1 is supported"),
    (dict(first_k_dense_replace=32), "first_k_dense_replace: must be in \\[0, num_hidden_layers=31\\]"),
    (dict(hidden_act="gelu"), "hidden_act: only 'silu'"),
    (dict(routed_scaling_factor=0.0), "routed_scaling_factor: must be > 0"),
    (dict(num_key_value_heads=0), "num_key_value_heads: must be an integer >= 1"),
    (dict(num_hidden_layers="7"), "num_hidden_layers: must be an integer >= 1, got '7'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "only plain RoPE"),
])
def test_invalid_config_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        MegrezMoeConfig(**fields)


# Values that neither model implements: refused in MegrezMoeConfig.check_supported, the one place
# that the reference, SGLang's config loading and both model constructors go through.
UNSUPPORTED = {
    "moe_layer_freq": (2, "MegrezMoeConfig.moe_layer_freq: only 1 is supported: expert-sharing "
                          "groups are runs of consecutive MoE layers; got 2"),
    "tie_word_embeddings": (True, "MegrezMoeConfig.tie_word_embeddings: only false is supported "
                                  "(the real checkpoint stores lm_head.weight; neither model ties "
                                  "it to embed_tokens), got true"),
    "partial_rotary_factor": (0.5, "MegrezMoeConfig.partial_rotary_factor: only 1.0 is supported "
                                   "(RoPE on the whole head_dim), got 0.5"),
    "rope_scaling": ({"rope_type": "yarn", "factor": 4.0},
                     "MegrezMoeConfig.rope_scaling: only plain RoPE is supported (the real model "
                     "has rope_scaling null), got rope_type 'yarn'"),
    "hidden_act": ("gelu", "MegrezMoeConfig.hidden_act: only 'silu' (SwiGLU) is supported, "
                           "got 'gelu'"),
    "attention_dropout": (1.0, "MegrezMoeConfig.attention_dropout: must be in [0, 1), got 1.0"),
}


@pytest.fixture(params=sorted(UNSUPPORTED))
def unsupported_checkpoint(request, tiny_checkpoint, tmp_path):
    """(folder, message): the tiny checkpoint with one unsupported value in its config.json."""
    value, message = UNSUPPORTED[request.param]
    folder = tmp_path / f"unsupported-{request.param}"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, request.param: value}))
    return folder, message


def test_unsupported_value_is_refused_by_the_reference_loader(unsupported_checkpoint):
    folder, message = unsupported_checkpoint
    with pytest.raises(ValueError) as refused:
        AutoModelForCausalLM.from_pretrained(folder)
    assert str(refused.value) == message  # one line, naming the field


def test_unsupported_value_is_refused_where_sglang_reads_the_config(unsupported_checkpoint):
    """sglang's get_config (what ModelConfig, and so the scheduler and the server's arguments,
    call) reads config.json through AutoConfig, and so through the same check."""
    from sglang.srt.configs import model_config
    from sglang.srt.utils.hf_transformers import get_config

    assert model_config.get_config is get_config  # the function the scheduler's ModelConfig calls
    folder, message = unsupported_checkpoint
    with pytest.raises(ValueError) as refused:
        get_config(str(folder), trust_remote_code=False)
    assert str(refused.value) == message


def test_unsupported_value_is_one_line_from_the_model_path_check(unsupported_checkpoint):
    """infer_sglang_offline.py, launch_server.sh, the cluster and eval check the model path first:
    their user gets this one line (and exit status 2), not SGLang's traceback."""
    folder, message = unsupported_checkpoint
    with pytest.raises(ModelPathError) as refused:
        resolve_model_path(str(folder))
    assert str(refused.value) == f"{folder / 'config.json'}: {message}"


@pytest.mark.parametrize("field", ["moe_layer_freq", "tie_word_embeddings", "hidden_act"])
def test_a_field_set_after_loading_is_refused_when_the_reference_is_built(tiny_checkpoint, field):
    """from_pretrained(path, field=value) sets the field after the config's own check; the
    model's constructor checks again."""
    value, message = UNSUPPORTED[field]
    assert getattr(MegrezMoeConfig.from_pretrained(tiny_checkpoint, **{field: value}), field) == value
    with pytest.raises(ValueError) as refused:
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint, **{field: value})
    assert str(refused.value) == message


def test_the_checkpoint_builder_refuses_an_unsupported_value(tmp_path, capsys):
    assert build_checkpoint_main([str(tmp_path / "ckpt"), "--set", "moe_layer_freq=2"]) == 2
    assert capsys.readouterr().err == f"build_checkpoint: {UNSUPPORTED['moe_layer_freq'][1]}\n"
    assert not (tmp_path / "ckpt").exists()


def test_a_config_json_lacking_a_guessed_field_warns_naming_it(tmp_path, caplog):
    legacy = MegrezMoeConfig().legacy_dict()
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    with caplog.at_level("WARNING", logger="megrez_sglang.model.config"):
        AutoConfig.from_pretrained(tmp_path)
    assert caplog.records == []  # every field present: nothing guessed
    del legacy["rms_norm_eps"], legacy["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    with caplog.at_level("WARNING", logger="megrez_sglang.model.config"):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        "Megrez2 config.json has no rope_theta, rms_norm_eps: using the guessed default(s) "
        "rope_theta=1000000.0, rms_norm_eps=1e-05"]
    assert loaded.rms_norm_eps == 1e-5
