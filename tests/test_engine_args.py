"""engine_args: what the offline script, the server and the tests start SGLang with."""

import json

import pytest

from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.serving.engine import TRAINED_CONTEXT_LENGTH, engine_args
from megrez_sglang.serving.server import sglang_flags


@pytest.fixture
def real_config_dir(tmp_path):
    """The real checkpoint's config.json (max_position_embeddings 163840), no weights."""
    (tmp_path / "config.json").write_text(json.dumps(MegrezMoeConfig().legacy_dict()))
    return str(tmp_path)


def test_megrez2_checkpoints_are_served_with_the_trained_32k_context(real_config_dir):
    assert TRAINED_CONTEXT_LENGTH == 32768
    assert engine_args(real_config_dir, device="cuda")["context_length"] == 32768
    assert engine_args(real_config_dir, device="cpu")["context_length"] == 32768
    # the server's command line carries it too
    flags = sglang_flags(engine_args(real_config_dir, device="cuda"))
    assert flags[flags.index("--context-length") + 1] == "32768"


def test_the_context_length_is_overridable(real_config_dir):
    assert engine_args(real_config_dir, device="cuda", context_length=65536)["context_length"] == 65536
    # None: SGLang's own default, the config's max_position_embeddings
    assert engine_args(real_config_dir, device="cuda", context_length=None)["context_length"] is None


def test_a_checkpoint_within_the_trained_context_keeps_its_own(tmp_path, real_config_dir):
    config = json.loads((tmp_path / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "context_length" not in engine_args(str(tmp_path), device="cuda")


def test_other_models_and_hub_ids_are_left_to_sglang(tmp_path):
    llama = {"model_type": "llama", "max_position_embeddings": 131072, "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(llama))
    assert "context_length" not in engine_args(str(tmp_path), device="cuda")
    assert "context_length" not in engine_args("Infinigence/Megrez2-3x7B-A3B", device="cuda")
