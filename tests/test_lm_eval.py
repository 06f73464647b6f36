"""lm-evaluation-harness, a client nobody here wrote, against launch_server.sh on the trained tiny
checkpoint (conftest.trained_server, float32), as a user runs it: `python -m lm_eval --include_path
eval/lm_eval_tasks ...` with the API key, no hub.

* local-chat-completions (generate_until; the server applies the chat template): tiny_math and
  tiny_choice give, item by item, the replies, answers and scores of `python -m eval --free
  --temperature 0` on the same items (both greedy).
* local-completions (loglikelihood: /v1/completions with echo and logprobs, the tokenizer from the
  checkpoint folder): tiny_choice_loglikelihood's log-likelihoods are the reference model's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval import BENCHMARKS
from eval.gsm8k import gsm8k_number
from eval.lm_eval_data import TASKS_DIR, jsonl
from megrez_sglang.model.model_path import TRAINED_CHECKPOINT

from .conftest import API_KEY, HELD_OUT_ITEMS

CHECKPOINT = str(TRAINED_CHECKPOINT)


def lm_eval(server, out: Path, model: str, endpoint: str, tasks: str, model_args: str, *options: str) -> dict:
    """One `python -m lm_eval` run (from a directory that is not the repository: the tasks must
    not depend on it) on the first HELD_OUT_ITEMS items of `tasks`: task -> {"results": its
    metrics, "samples": doc id -> logged sample}."""
    args = f"model=megrez-moe,base_url={server.url}{endpoint},max_length=1024,{model_args}"
    r = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", args, "--apply_chat_template",
         "--include_path", str(TASKS_DIR), "--tasks", tasks, "--limit", str(HELD_OUT_ITEMS),
         "--log_samples", "--output_path", str(out), *options],
        cwd=out.parent, capture_output=True, text=True, timeout=900,
        env={**os.environ, "OPENAI_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    (results_file,) = out.glob("*/results_*.json")
    results = json.loads(results_file.read_text())["results"]
    runs = {}
    for task in tasks.split(","):
        (samples_file,) = out.glob(f"*/samples_{task}_*.jsonl")
        samples = {s["doc"]["id"]: s for s in map(json.loads, samples_file.open())}
        runs[task] = {"results": results[task], "samples": samples}
    return runs


@pytest.fixture(scope="module")
def chat_run(trained_server, tmp_path_factory):
    return lm_eval(trained_server, tmp_path_factory.mktemp("lm-eval-chat") / "out", "local-chat-completions",
                   "/v1/chat/completions", "tiny_math,tiny_choice", "num_concurrent=16")


@pytest.fixture(scope="module")
def loglikelihood_run(trained_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm-eval-loglikelihood") / "out"
    return lm_eval(trained_server, out, "local-completions", "/v1/completions", "tiny_choice_loglikelihood",
                   f"tokenizer_backend=huggingface,tokenizer={CHECKPOINT}", "--batch_size", "16")


# --------------------------------------------------------------------------------------- quick lane


def test_the_task_data_files_are_the_held_out_split():
    for name in ("tiny_math", "tiny_choice"):
        committed = (TASKS_DIR / f"{name}.jsonl").read_text()
        assert committed == jsonl(BENCHMARKS[name]()), "regenerate with: python -m eval.lm_eval_data"
        assert len(committed.splitlines()) == 64


def task_utils():
    """eval/lm_eval_tasks/utils.py, loaded from its file as lm-eval loads it (`!function utils.NAME`)."""
    spec = importlib.util.spec_from_file_location("lm_eval_task_utils", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_filters_read_answers_as_the_eval_does():
    utils = task_utils()
    replies = [["先算 12+30=42。\\boxed{42}"], ["\\boxed{7} 不对，应为 \\boxed{-7.0}"], ["没有答案"]]
    assert utils.boxed_number(replies, [{}] * 3) == [["42"], ["-7"], ["[no answer]"]]
    docs = [{"letters": ["A", "B", "C", "D"]}] * 2 + [{"letters": ["A", "B"]}]
    replies = [['A. 否\nC. 是\n{"answer": "C"}'], ["答案：B"], ['{"answer": "D"}']]
    assert utils.answer_letter(replies, docs) == [["C"], ["B"], ["[no answer]"]]
    assert utils.answer_objects({"letters": ["A", "B"]}) == ['{"answer": "A"}', '{"answer": "B"}']


# ------------------------------------------------------------------------------ the trained server


@pytest.mark.parametrize("task", ["tiny_math", "tiny_choice"])
def test_chat_completions_scores_equal_the_projects_item_by_item(chat_run, trained_free_greedy_eval, task):
    """Same replies, same answers, same scores: lm-eval's requests (its chat payload, its stop
    and length settings) reach the model exactly as the project's own eval's do."""
    utils = task_utils()
    ours, theirs = trained_free_greedy_eval[task], chat_run[task]["samples"]
    assert sorted(theirs) == sorted(ours) and len(ours) == HELD_OUT_ITEMS
    for item_id, record in ours.items():
        sample = theirs[item_id]
        assert sample["resps"][0][0] == record["output"], item_id
        # the project's answer, spelled as the task's filter spells it
        answer = record["answer"]
        if task == "tiny_math" and answer is not None:
            number = gsm8k_number(answer)
            answer = None if number is None else utils.canonical_number(number)
        assert sample["filtered_resps"][0] == (utils.NO_ANSWER if answer is None else answer), item_id
        assert sample["exact_match"] == record["correct"], (item_id, answer, record["gold"])
    score = sum(r["correct"] for r in ours.values()) / len(ours)
    reported = chat_run[task]["results"]["exact_match,answer_object" if task == "tiny_choice"
                                         else "exact_match,boxed"]
    print(f"{task}: lm-eval {100 * reported:.1f} %, python -m eval --free --temperature 0 "
          f"{100 * score:.1f} % ({len(ours)} items)")
    assert reported == pytest.approx(score)


def test_completions_loglikelihoods_are_the_reference_models(loglikelihood_run):
    """Each (context, continuation) lm-eval scored through /v1/completions (echo, logprobs, token
    prompts) against the reference model's log-probability of the same tokens (float32 both)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    run = loglikelihood_run["tiny_choice_loglikelihood"]
    correct = []
    for item_id, sample in run["samples"].items():
        scores = []
        for args, resp in zip(sample["arguments"].values(), sample["resps"], strict=True):
            context, continuation = args["arg_0"], args["arg_1"]
            # lm-eval's split: the whole text's tokens, the context's tokens, the rest
            context_ids = tokenizer(context, add_special_tokens=False).input_ids
            ids = tokenizer(context + continuation, add_special_tokens=False).input_ids
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            expected = sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids)))
            served = float(resp[0][0])
            assert served == pytest.approx(expected, abs=2e-3), (item_id, continuation, served, expected)
            scores.append(served)
        correct.append(scores.index(max(scores)) == int(sample["target"]))
        assert sample["acc"] == correct[-1]
    assert run["results"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    print(f"tiny_choice_loglikelihood: lm-eval acc {100 * sum(correct) / len(correct):.1f} % "
          f"({len(correct)} items)")
