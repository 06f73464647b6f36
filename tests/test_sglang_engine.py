"""Serving behaviour of the SGLang model: radix-cache prefix sharing, tensor parallelism,
registration paths (plugin, SGLANG_EXTERNAL_MODEL_PACKAGE) and loud failures."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megrez_sglang.model.fidelity import prompt_ids, sglang_greedy

GREEDY = {"temperature": 0.0, "max_new_tokens": 16, "ignore_eos": True}


def test_shared_prefix_is_served_from_the_radix_cache(tiny_engine, tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    capital = "北京是中华人民共和国的首都，也是全国的政治中心、文化中心、国际交往中心和科技创新中心。"
    prefix = tok(capital * 6)["input_ids"]
    questions = [tok(q)["input_ids"] for q in ("长江有多长？", "What is the capital of France?")]
    tiny_engine.flush_cache()
    first = tiny_engine.generate(input_ids=prefix + questions[0], sampling_params=GREEDY)
    assert first["meta_info"]["cached_tokens"] == 0
    second = tiny_engine.generate(input_ids=prefix + questions[1], sampling_params=GREEDY)
    assert second["meta_info"]["cached_tokens"] >= len(prefix) - 1
    assert tiny_engine.flush_cache().success
    uncached = tiny_engine.generate(input_ids=prefix + questions[1], sampling_params=GREEDY)
    assert uncached["meta_info"]["cached_tokens"] == 0
    assert uncached["output_ids"] == second["output_ids"]


def test_tensor_parallel_2_on_cpu_matches_tp_1(engines, tiny_checkpoint):
    prompts = prompt_ids(tiny_checkpoint)
    tp1 = sglang_greedy(engines.get(tiny_checkpoint, dtype="float32"), prompts, batched=True)
    tp2 = sglang_greedy(engines.get(tiny_checkpoint, dtype="float32", tp_size=2), prompts, batched=True)
    assert [t for t, _ in tp2] == [t for t, _ in tp1]
    assert max(abs(a - b) for (_, l1), (_, l2) in zip(tp1, tp2, strict=True)
               for a, b in zip(l1, l2, strict=True)) < 1e-3


ENGINE_SCRIPT = """
import json, sys
import megrez_sglang
from megrez_sglang.serving.engine import start_engine
if __name__ == "__main__":
    engine = start_engine(sys.argv[1], dtype="float32", log_level="error")
    out = engine.generate(input_ids=[[100, 200, 300]], sampling_params=json.loads(sys.argv[2]))
    print("TOKENS", json.dumps(out[0]["output_ids"]))
    engine.shutdown()
"""


def run_engine_script(tmp_path, checkpoint, env_overrides, pythonpath_first=None):
    script = tmp_path / "run_engine.py"
    script.write_text(ENGINE_SCRIPT)
    env = {**os.environ, **env_overrides}
    if pythonpath_first:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath_first), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(script), checkpoint, json.dumps(GREEDY)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def test_external_model_package_works_without_the_plugin(tmp_path, tiny_checkpoint, tiny_engine):
    expected = tiny_engine.generate(input_ids=[100, 200, 300], sampling_params=GREEDY)["output_ids"]
    result = run_engine_script(tmp_path, tiny_checkpoint, {
        "SGLANG_PLUGINS": "no-such-plugin",  # whitelist that excludes megrez_moe
        "SGLANG_EXTERNAL_MODEL_PACKAGE": "megrez_sglang.sglang_models",
    })
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("TOKENS"))
    assert json.loads(line.split(" ", 1)[1]) == expected


@pytest.mark.slow
def test_a_broken_model_module_fails_loudly_instead_of_falling_back(tmp_path, tiny_checkpoint):
    """A copy of the package whose model module cannot import, first on PYTHONPATH (so every
    SGLang process sees it): loading must fail naming the error, never fall back to SGLang's
    generic transformers backend."""
    import megrez_sglang

    broken = tmp_path / "broken"
    shutil.copytree(Path(megrez_sglang.__file__).parent, broken / "megrez_sglang")
    model_file = broken / "megrez_sglang" / "sglang_models" / "megrez_moe.py"
    model_file.write_text(model_file.read_text() + "\nimport no_such_module_megrez_test\n")
    result = run_engine_script(tmp_path, tiny_checkpoint, {}, pythonpath_first=broken)
    assert result.returncode != 0
    assert "ModelModuleImportError" in result.stderr
    assert "No module named 'no_such_module_megrez_test'" in result.stderr
    assert "TOKENS" not in result.stdout
    assert "TransformersForCausalLM" not in result.stderr


def test_the_registry_gets_a_loud_stand_in_when_the_model_cannot_import(monkeypatch):
    from sglang.srt.models.registry import ModelRegistry

    from megrez_sglang.serving import registration

    # None in sys.modules makes `import megrez_sglang.sglang_models.megrez_moe` raise ImportError
    monkeypatch.setitem(sys.modules, "megrez_sglang.sglang_models.megrez_moe", None)
    monkeypatch.setitem(ModelRegistry.models, "MegrezMoeForCausalLM", None)
    registration.register_with_sglang()
    stand_in = ModelRegistry.models["MegrezMoeForCausalLM"]
    assert stand_in.__name__ == "MegrezMoeForCausalLM"
    with pytest.raises(registration.ModelModuleImportError, match="megrez_moe failed to import"):
        stand_in(config=None)


def test_dummy_weights_load_at_the_checkpoint_shapes(engines, tiny_checkpoint):
    """load_format="dummy" (random weights at the real shapes, for GPU benchmarks) builds and runs
    the model without reading the safetensors."""
    engine = engines.get(tiny_checkpoint, dtype="bfloat16", load_format="dummy")
    out = engine.generate(input_ids=[[100, 200, 300]], sampling_params=GREEDY)
    assert len(out[0]["output_ids"]) == GREEDY["max_new_tokens"]
