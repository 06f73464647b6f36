"""infer_sglang_offline.py end to end (subprocesses, CPU)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import infer_sglang_offline

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "infer_sglang_offline.py")


def run(*args, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


NOISE = ("Ignore import error", "Warning", "Cannot detect CUDA architecture", "No CUDA runtime",
         "Using custom SIGQUIT handler", "deprecated")


def assert_quiet(stderr: str) -> None:
    """What SGLang prints on a CPU host about GPU-only features stays out of the user's way."""
    noisy = [line for line in stderr.splitlines() if any(n in line for n in NOISE)]
    assert noisy == [], noisy
    assert len(stderr.splitlines()) <= 4, stderr


@pytest.mark.slow
def test_card_demos_by_default_reproducible_with_a_seed(tiny_checkpoint):
    outputs = []
    for _ in range(2):
        r = run(tiny_checkpoint, "--json", "--seed", "3", "--max-new-tokens", "16")
        assert r.returncode == 0, r.stderr[-2000:]
        outputs.append([json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")])
    first, second = outputs
    assert_quiet(r.stderr)
    assert r.stderr.count("holds random weights") == 1  # one line says the weights are random
    assert [(o["kind"], o["input"]) for o in first] == [
        ("completion", "世界上最高的山峰是"), ("chat", "世界上最高的山峰是哪座？")]
    assert all(o["completion_tokens"] == 16 for o in first)
    assert first[1]["prompt_tokens"] > first[0]["prompt_tokens"]  # chat template around it
    assert [o["text"] for o in first] == [o["text"] for o in second]  # temperature 0.7, same seed


@pytest.mark.slow
def test_streaming_prints_the_text_as_it_comes(tiny_checkpoint):
    r = run(tiny_checkpoint, "--stream", "--chat", "你好", "--max-new-tokens", "8", "--temperature", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("[chat] 你好\n") and len(r.stdout.strip().splitlines()) >= 2


def test_missing_path_is_one_line_not_a_traceback(capsys):
    assert infer_sglang_offline.main(["/nonexistent/megrez2"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "infer_sglang_offline.py: error: model path '/nonexistent/megrez2' does not exist"


def test_a_checkpoint_that_is_not_megrez2_is_refused(tmp_path, capsys):
    llama_config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(llama_config))
    assert infer_sglang_offline.main([str(tmp_path)]) == 2
    assert "is not a Megrez2 checkpoint: config.json has model_type 'llama'" in capsys.readouterr().err


def test_a_config_value_the_model_does_not_implement_is_one_line(tmp_path, tiny_checkpoint, capsys):
    """Refused before SGLang starts (where the same check would end in a traceback)."""
    folder = tmp_path / "freq2"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "moe_layer_freq": 2}))
    assert infer_sglang_offline.main([str(folder)]) == 2
    assert capsys.readouterr().err == (
        f"infer_sglang_offline.py: error: {folder / 'config.json'}: MegrezMoeConfig.moe_layer_freq: "
        "only 1 is supported: expert-sharing groups are runs of consecutive MoE layers; got 2\n")


def test_bad_sampling_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        infer_sglang_offline.main(["--top-p", "1.5"])
    assert exit_.value.code == 2 and "--top-p must be in (0, 1], got 1.5" in capsys.readouterr().err
