"""The checkpoint builder: real layout, determinism, tokenizer and chat template."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from megrez_sglang.model.build_checkpoint import build_checkpoint, read_weights
from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.model.model_path import TRAINED_CHECKPOINT

from .test_reference_model import expected_tensor_names


def digests(path: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(path).iterdir())}


def test_tiny_has_exactly_the_real_tensor_names_and_two_sharing_groups(tiny_checkpoint):
    config = MegrezMoeConfig.from_pretrained(tiny_checkpoint)
    assert config.num_expert_groups == 2 and config.num_hidden_layers == 7
    t = read_weights(tiny_checkpoint)
    assert set(t) == expected_tensor_names(config)
    assert t["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert t["model.layers.1.mlp.experts.0.gate_proj.weight"].dtype == torch.bfloat16
    assert sum(p.stat().st_size for p in Path(tiny_checkpoint).glob("*.safetensors")) < 5e6


def test_config_json_has_the_real_field_set(tiny_checkpoint):
    raw = json.loads((Path(tiny_checkpoint) / "config.json").read_text())
    assert raw["architectures"] == ["MegrezMoeForCausalLM"] and raw["model_type"] == "megrez_moe"
    assert "auto_map" not in raw  # it would name remote code the folder does not contain
    assert raw["rope_theta"] == 1e6 and raw["rope_scaling"] is None
    for field in ("experts_shared_frequency", "pre_gate", "n_group", "topk_group", "topk_method",
                  "scoring_func", "routed_scaling_factor", "norm_topk_prob", "first_k_dense_replace",
                  "moe_layer_freq", "n_shared_experts", "torch_dtype"):
        assert field in raw


def test_generation_config_has_the_cards_sampling(tiny_checkpoint):
    gen = json.loads((Path(tiny_checkpoint) / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert gen["temperature"] == 0.7 and gen["top_p"] == 0.9 and gen["do_sample"] is True
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids(["<|turn_end|>", "<|eos|>"])


def test_correction_biases_differ_between_the_layers_of_a_group(tiny_checkpoint):
    t = read_weights(tiny_checkpoint)
    b = [t[f"model.layers.{l}.mlp.gate.e_score_correction_bias"] for l in (1, 2, 3)]
    assert not torch.equal(b[0], b[1]) and not torch.equal(b[1], b[2])
    assert min(float(x.std()) for x in b) > 0.1


def test_layers_of_a_group_route_differently(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    chosen = {}
    for l in (1, 2, 3):
        model.model.layers[l].mlp.gate.register_forward_hook(
            lambda m, i, out, l=l: chosen.update({l: out[1].sort(-1).values}))
    with torch.no_grad():
        model(torch.arange(100, 140)[None])
    assert not torch.equal(chosen[1], chosen[2]) and not torch.equal(chosen[2], chosen[3])
    assert len({tuple(r) for r in chosen[2].tolist()}) > 3  # the choice depends on the token


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = build_checkpoint(tmp_path / "a", "tiny", seed=3)
    b = build_checkpoint(tmp_path / "b", "tiny", seed=3)
    c = build_checkpoint(tmp_path / "c", "tiny", seed=4)
    assert digests(a) == digests(b)
    assert digests(a)["model.safetensors"] != digests(c)["model.safetensors"]
    assert digests(a)["tokenizer.json"] == digests(c)["tokenizer.json"]


def test_small_preset_is_tens_of_megabytes_and_sharded(tmp_path):
    path = build_checkpoint(tmp_path / "small", "small", max_shard_size="20MB")
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    assert 10e6 < size < 100e6
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == expected_tensor_names(MegrezMoeConfig.from_pretrained(path))
    assert len(set(index["weight_map"].values())) >= 2


def test_real_config_preset_writes_config_and_tokenizer_only(tmp_path):
    path = build_checkpoint(tmp_path / "real", "real-config")
    assert not list(path.glob("*.safetensors"))
    config = MegrezMoeConfig.from_pretrained(path)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (128880, 2048, 31)
    assert (path / "tokenizer.json").exists()


def test_cli_overrides_fields_and_rejects_bad_ones(tmp_path, capsys):
    from megrez_sglang.model.build_checkpoint import main

    assert main([str(tmp_path / "x"), "--set", "num_key_value_heads=1", "--set", "pre_gate=false",
                 "--set", "routed_scaling_factor=2.5"]) == 0
    config = MegrezMoeConfig.from_pretrained(tmp_path / "x")
    assert (config.num_key_value_heads, config.pre_gate, config.routed_scaling_factor) == (1, False, 2.5)
    assert main([str(tmp_path / "y"), "--set", "num_key_value_heads=3"]) == 2
    assert "num_attention_heads (4) must be divisible by num_key_value_heads (3)" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert main([str(tmp_path / "z"), "--set", "n_experts=4"]) == 2
    assert "no field 'n_experts'" in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    "世界上最高的山峰是哪座？珠穆朗玛峰，海拔8848.86米。",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    '{"answer": "C"} \\frac{1}{2} x^2 + 3 = 7',
    "混合 mixed 文本 text ①② emoji 🙂 and tabs\tand\nnewlines",
])
def test_tokenizer_round_trips(tiny_checkpoint, text):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text


def test_tokenizer_tokenizes_sensibly(tiny_checkpoint):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]  # digits one by one
    assert len(tok("世界上最高的山峰是")["input_ids"]) <= 6  # Chinese merges, not bytes
    assert len(tok("Please reason step by step")["input_ids"]) == 5  # English words
    assert "answer" in tok.tokenize('{"answer": "C"}') or "Ġanswer" in tok.tokenize('{"answer": "C"}')


def test_special_tokens_eos_and_no_bos(tiny_checkpoint):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    for special in ("<|eos|>", "<|unk|>", "<|pad|>", "<|role_start|>", "<|role_end|>",
                    "<|turn_end|>", "<|code_start|>", "<|code_end|>"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id or special == "<|unk|>"
        assert tok(special)["input_ids"] == [tok.convert_tokens_to_ids(special)]
    assert tok.eos_token == "<|turn_end|>" and tok.pad_token == "<|pad|>"
    assert tok.bos_token is None
    assert tok("hi")["input_ids"] == tok.convert_tokens_to_ids(tok.tokenize("hi"))
    config = MegrezMoeConfig.from_pretrained(tiny_checkpoint)
    assert config.eos_token_id == tok.eos_token_id and config.vocab_size == len(tok)


def test_chat_template_renders_the_megrez_format(tiny_checkpoint):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    messages = [{"role": "user", "content": "世界上最高的山峰是哪座？"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|role_start|>system<|role_end|>你是Megrez2，将针对用户的问题给出详细的、积极的回答。<|turn_end|>"
        "<|role_start|>user<|role_end|>世界上最高的山峰是哪座？<|turn_end|>"
        "<|role_start|>assistant<|role_end|>"
    )
    messages = [{"role": "system", "content": "S"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|role_start|>system<|role_end|>S<|turn_end|><|role_start|>user<|role_end|>ab<|turn_end|>"
        "<|role_start|>assistant<|role_end|>c<|turn_end|>"
    )


def test_automodel_loads_the_tiny_checkpoint_and_generates(tiny_checkpoint):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert type(model).__module__ == "megrez_sglang.model.reference"
    assert model.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    ids = tok("世界上最高的山峰是", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert out[0, : ids.shape[1]].tolist() == ids[0].tolist()


# A process that has not imported megrez_sglang (lm-evaluation-harness loading the tokenizer),
# then the same process after the import. argv: the real checkpoint's layout, then ours.
LOAD_WITHOUT_THE_PACKAGE = """
import json, sys
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoTokenizer
TEXT = "世界上最高的山峰是<|turn_end|>"
real_layout, ours = sys.argv[1], sys.argv[2:]
results = {}
for path in ours:
    results[path] = {"ids": AutoTokenizer.from_pretrained(path)(TEXT)["input_ids"],
                     "tokenizers_ids": Tokenizer.from_file(path + "/tokenizer.json").encode(TEXT).ids}
    try:
        results[path]["config"] = type(AutoConfig.from_pretrained(path)).__name__
    except ValueError as e:
        results[path]["config"] = str(e).splitlines()[0]
assert "megrez_sglang" not in sys.modules
import megrez_sglang
for path in [real_layout, *ours]:
    entry = results.setdefault(path, {})
    entry["ids_after_import"] = AutoTokenizer.from_pretrained(path)(TEXT)["input_ids"]
    entry["config_after_import"] = type(AutoConfig.from_pretrained(path)).__name__
print(json.dumps(results))
"""


def test_checkpoints_load_in_a_plain_process_without_questions(tiny_checkpoint, tmp_path):
    """The committed and a freshly built checkpoint name no remote code: AutoTokenizer loads them
    in a process without this package and without a terminal (stdin closed), asking nothing;
    AutoConfig there names the unknown model_type, and after `import megrez_sglang` loads them, as
    it loads the real checkpoint's layout (auto_map and the .py files it names) without running
    that code."""
    real_layout = tmp_path / "real-layout"
    shutil.copytree(TRAINED_CHECKPOINT, real_layout)
    config = json.loads((real_layout / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_megrez_moe.MegrezMoeConfig",
                          "AutoModelForCausalLM": "modeling_megrez_moe.MegrezMoeForCausalLM"}
    (real_layout / "config.json").write_text(json.dumps(config))
    for name in ("configuration_megrez_moe.py", "modeling_megrez_moe.py"):
        (real_layout / name).write_text("raise RuntimeError('the remote code ran')\n")
    ours = [str(TRAINED_CHECKPOINT), str(tiny_checkpoint)]
    for path in ours:
        assert "auto_map" not in json.loads((Path(path) / "config.json").read_text()), path

    run = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_THE_PACKAGE, str(real_layout), *ours],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for question in ("trust_remote_code", "[y/N]", "custom code"):
        assert question not in run.stdout + run.stderr
    results = json.loads(run.stdout.splitlines()[-1])
    for path in ours:
        got = results[path]
        assert got["ids"] == got["tokenizers_ids"] == got["ids_after_import"]
        eos = json.loads((Path(path) / "config.json").read_text())["eos_token_id"]
        assert got["ids"][-1] == eos  # <|turn_end|>, the special token, in one piece
        assert got["config"].startswith("The checkpoint you are trying to load has model type "
                                        "`megrez_moe` but Transformers does not recognize")
        assert got["config_after_import"] == "MegrezMoeConfig"
    assert results[str(real_layout)]["config_after_import"] == "MegrezMoeConfig"
    assert results[str(real_layout)]["ids_after_import"] == results[ours[0]]["ids"]
