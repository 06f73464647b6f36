"""Stored and activated parameters from the real config alone."""


from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.model.param_count import count_parameters


def test_real_config_stores_7_50b_with_experts_counted_once_per_group():
    counts = count_parameters(MegrezMoeConfig(num_key_value_heads=4))
    assert counts.stored == 7_498_825_600
    assert counts.experts_stored == 10 * 64 * 3 * 2048 * 1408
    assert round(counts.stored / 1e9, 2) == 7.50


def test_two_kv_heads_store_7_47b():
    assert round(count_parameters(MegrezMoeConfig(num_key_value_heads=2)).stored / 1e9, 3) == 7.466


def test_real_config_activates_about_3_26b_per_token():
    counts = count_parameters(MegrezMoeConfig())
    assert counts.activated == 3_255_533_440
    assert round(counts.activated / 1e9, 2) == 3.26


def test_cli_prints_the_counts(capsys):
    from megrez_sglang.model.param_count import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "10 expert pools" in out
    assert "7.499 B" in out and "3.256 B" in out
