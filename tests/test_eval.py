"""eval/: loaders (the fixture mirror in tests/data/benchmarks, the hub loaders on rows in the hub's
format, the full mirror when there is one), graders on golden cases (the sandbox itself:
test_sandbox.py), an end-to-end run of every benchmark through the server, and resuming a killed
run."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from eval import BENCHMARKS, CARD_BENCHMARKS
from eval.benchmark import BenchmarkDataError, Item, Sample
from eval.gsm8k import GSM8K, gsm8k_number
from eval.humaneval import HumanEval
from eval.ifeval import IFEval
from eval.math500 import Math500
from eval.mbpp import MBPP
from eval.sandbox import isolation_level, run_program

from .conftest import API_KEY, ROOT

FIXTURE_MIRROR = Path(__file__).parent / "data" / "benchmarks"  # a few real rows of each set
HUB_ROWS = Path(__file__).parent / "data" / "hub"  # the same kind of rows in the hub's format
FULL_ROWS = {"gsm8k": 1319, "math500": 500, "ceval": 1346, "mmlu_pro": 12032, "ifeval": 541,
             "humaneval": 164, "mbpp": 500}
FIXTURE_ROWS = {"gsm8k": 5, "math500": 5, "ceval": 6, "mmlu_pro": 4, "ifeval": 4, "humaneval": 3,
                "mbpp": 3}


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset answering from tests/data/hub (files named after the dataset, its
    config and split); records what was asked."""
    import datasets

    asked = []

    def load_dataset(path, name=None, split=None, **_):
        asked.append((path, name, split))
        stem = "__".join(p for p in (path.replace("/", "__"), name, split) if p)
        return [json.loads(l) for l in (HUB_ROWS / f"{stem}.jsonl").open(encoding="utf-8")]

    def config_names(path, **_):
        assert path == "ceval/ceval-exam"
        return sorted(p.name.split("__")[2] for p in HUB_ROWS.glob("ceval__ceval-exam__*__val.jsonl"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_config_names", config_names)
    return asked


def items_by_source(name: str, fake_hub) -> tuple[list[Item], list[Item]]:
    bench = BENCHMARKS[name]()
    return bench.items(FIXTURE_MIRROR), bench.items(None)


@pytest.mark.parametrize("name", sorted(FIXTURE_ROWS))
def test_hub_and_mirror_loaders_give_the_same_items(name, fake_hub):
    mirror, hub = items_by_source(name, fake_hub)
    assert len(mirror) == FIXTURE_ROWS[name] and len({i.id for i in mirror}) == len(mirror)
    assert [(i.id, i.prompt, i.gold, i.letters) for i in hub] == \
        [(i.id, i.prompt, i.gold, i.letters) for i in mirror]
    assert fake_hub  # the hub loader asked datasets, under the dataset's real name


def test_hub_loaders_ask_for_the_published_datasets(fake_hub):
    for name in sorted(FIXTURE_ROWS):
        BENCHMARKS[name]().items(None)
    assert {path for path, _, _ in fake_hub} == {
        "openai/gsm8k", "HuggingFaceH4/MATH-500", "ceval/ceval-exam", "TIGER-Lab/MMLU-Pro",
        "google/IFEval", "openai/openai_humaneval", "google-research-datasets/mbpp"}
    assert ("openai/gsm8k", "main", "test") in fake_hub
    assert ("ceval/ceval-exam", "accountant", "val") in fake_hub


def test_an_unreachable_hub_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*_a, **_k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BenchmarkDataError, match=r"gsm8k: could not load it from the Hugging Face hub "
                       r"\(ConnectionError: .*\); on a machine offline give a local mirror"):
        GSM8K().items(None)


def test_a_mirror_without_the_file_names_it(tmp_path):
    with pytest.raises(BenchmarkDataError, match=f"benchmark data not found: {tmp_path}/gsm8k/test.jsonl"):
        GSM8K().items(tmp_path)


def test_loaded_items_carry_the_cards_prompts():
    gsm = GSM8K().load(FIXTURE_MIRROR)
    assert gsm[0].prompt.endswith("Please reason step by step, and put your final answer within \\boxed{}.")
    assert [i.gold for i in gsm] == ["18", "3", "70000", "2125", "-10"]  # commas dropped, sign kept
    ceval = BENCHMARKS["ceval"]().load(FIXTURE_MIRROR)
    assert {i.meta["subject"] for i in ceval} == {"accountant", "high_school_physics"}
    assert ceval[0].prompt.endswith('请在 answer 字段中仅以选择字母的形式显示您的选择，例如 "answer": "C" 。')
    assert "\nA. " in ceval[0].prompt and "\nD. " in ceval[0].prompt and ceval[0].letters == list("ABCD")
    mmlu = {i.id: i for i in BENCHMARKS["mmlu_pro"]().load(FIXTURE_MIRROR)}
    assert sorted(len(i.letters) for i in mmlu.values()) == [3, 7, 9, 10]  # "N/A" padding dropped
    assert mmlu["3983"].gold == "C"  # graded on the letter, not the inconsistent answer_index
    assert all(i.gold in i.letters for i in mmlu.values())


@pytest.mark.parametrize("name", sorted(FULL_ROWS))
def test_full_mirror_row_counts(name, full_data_dir):
    items = BENCHMARKS[name]().load(full_data_dir)
    assert len(items) == FULL_ROWS[name]
    assert len({i.id for i in items}) == len(items)  # ids are unique: resume relies on them
    if name == "ceval":
        assert len({i.meta["subject"] for i in items}) == 52
    if name == "mmlu_pro":
        assert all(i.gold in i.letters for i in items) and {len(i.letters) for i in items} >= {3, 10}


def sample(answer, text=None):
    return Sample(text if text is not None else str(answer), answer, 1, 0.0)


@pytest.mark.parametrize("text, number", [
    ("18", 18.0), ("\\$18.00", 18.0), ("18 dollars", 18.0), ("1,234", 1234.0), ("-3", -3.0),
    ("１８", 18.0), ("\\text{18 apples}", None), ("x = 4.5", 4.5), ("50\\%", 50.0), ("", None),
    ("The answer is 7, not 8.", 8.0),
])
def test_gsm8k_number_rules(text, number):
    assert gsm8k_number(text) == number


def test_gsm8k_grading_with_commas_negatives_and_votes():
    bench = GSM8K()
    item = Item("x", "", "1234")
    assert bench.grade(item, [sample("1,234")])["correct"] == 1.0
    assert bench.grade(Item("y", "", "-2"), [sample("-2")])["correct"] == 1.0
    assert bench.grade(item, [sample("1234"), sample("99"), sample("1,234.0")])["correct"] == 1.0
    assert bench.grade(item, [sample("99"), sample("99"), sample("1234")])["correct"] == 0.0
    assert bench.extract(item, "so \\boxed{1,234}") == "1,234"
    assert bench.extract(item, "no box, the total is 1234") == "no box, the total is 1234"


def test_math500_grading_uses_math_verify_gold_first():
    bench = Math500()
    item = Item("m", "", "\\frac{1}{2}", meta={"subject": "Algebra"})
    assert bench.grade(item, [sample("0.5")])["correct"] == 1.0
    assert bench.grade(item, [sample("\\dfrac12")])["correct"] == 1.0
    assert bench.grade(item, [sample("2")])["correct"] == 0.0
    assert bench.grade(item, [sample(None, "no answer")])["correct"] == 0.0
    assert bench.extract(item, "\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


def test_choice_grading_is_on_the_items_letters():
    bench = BENCHMARKS["mmlu_pro"]()
    item = Item("c", "", "J", letters=list("ABCDEFGHIJ"), meta={"category": "law"})
    assert bench.extract(item, '{"answer": "J"}') == "J"
    assert bench.extract(item, "Please consider option K") is None
    assert bench.grade(item, [sample("J"), sample("A"), sample("J")])["correct"] == 1.0


def test_ifeval_grading_with_local_nltk_data(monkeypatch):
    monkeypatch.setattr("nltk.download", lambda *a, **k: pytest.fail("NLTK tried to download"))
    bench = IFEval()
    items = {i.id: i for i in bench.load(FIXTURE_MIRROR)}
    item = next(i for i in items.values()
                if i.meta["instruction_id_list"] == ["length_constraints:number_sentences"])
    kwargs = item.meta["kwargs"][0]
    n = kwargs["num_sentences"]
    many = " ".join(f"This is sentence number {k}." for k in range(n + 5))
    few = "One sentence only."
    expect_many = kwargs["relation"] == "at least"
    assert bench.grade(item, [sample(many)])["correct"] == float(expect_many)
    assert bench.grade(item, [sample(few)])["correct"] == float(not expect_many)
    no_comma = next(i for i in items.values() if i.meta["instruction_id_list"] == ["punctuation:no_comma"])
    graded = bench.grade(no_comma, [sample("No commas here at all.")])
    assert graded["correct"] == 1.0 and graded["inst_strict"] == [1.0]
    assert bench.grade(no_comma, [sample("Commas, here.")])["correct"] == 0.0
    assert bench.grade(no_comma, [sample("")])["correct"] == 0.0


def test_ifeval_loose_mode_forgives_a_first_line_and_asterisks():
    bench = IFEval()
    item = Item("k", "Answer in lowercase", None, meta={
        "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]})
    graded = bench.grade(item, [sample("Sure! Here it is:\nall in lowercase now")])
    assert graded["correct"] == 0.0 and graded["prompt_loose"] == 1.0


def check_all(programs):
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(run_program, programs))


@pytest.mark.slow
def test_humaneval_reference_solutions_pass_the_sandbox(full_data_dir):
    bench = HumanEval()
    items = bench.load(full_data_dir)
    runs = check_all([bench.program(i, i.gold) for i in items])
    failed = [(i.id, r.output[-300:]) for i, r in zip(items, runs, strict=True) if not r.passed]
    assert failed == [] and len(runs) == 164


def test_humaneval_full_function_replies_and_wrong_code():
    bench = HumanEval()
    item = bench.load(FIXTURE_MIRROR)[0]  # has_close_elements
    full = "```python\n" + item.meta["prompt"] + item.gold + "\n```"
    assert bench.grade(item, [sample(bench.extract(item, full))])["correct"] == 1.0
    wrong = f"def {item.meta['entry_point']}(numbers, threshold):\n    return False\n"
    graded = bench.grade(item, [sample(wrong)])
    assert graded["correct"] == 0.0 and graded["status"] == ["failed"]


@pytest.mark.slow
def test_mbpp_reference_solutions_pass_the_sandbox(full_data_dir):
    bench = MBPP()
    items = bench.load(full_data_dir)
    runs = check_all([bench.program(i, i.gold) for i in items])
    failed = [i.id for i, r in zip(items, runs, strict=True) if not r.passed]
    assert failed == [] and len(runs) == 500


def test_mbpp_extraction_between_begin_and_done():
    bench = MBPP()
    item = bench.load(FIXTURE_MIRROR)[0]
    assert "[BEGIN]" in item.prompt and item.prompt.count("[DONE]") == 3
    reply = f"[BEGIN]\n'{item.gold}'\n[DONE]"
    assert bench.grade(item, [sample(bench.extract(item, reply))])["correct"] == 1.0


def run_eval(*args, timeout=900):
    if "--data-dir" not in args:
        args = (*args, "--data-dir", str(FIXTURE_MIRROR))
    return subprocess.run([sys.executable, "-m", "eval", *args, "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "MEGREZ_API_KEY": API_KEY})


def test_every_benchmark_end_to_end_through_the_server(server, tmp_path):
    out = tmp_path / "run"
    r = run_eval("--base-url", server.url, "--limit", "3", "--out", str(out),
                 "--reasoning-max-tokens", "24", "--max-tokens", "48")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == set(CARD_BENCHMARKS)  # the default: the card's seven
    for name in CARD_BENCHMARKS:
        records = [json.loads(l) for l in (out / f"{name}.jsonl").open()]
        assert len(records) == 3
        for rec in records:
            assert {"prompt", "output", "answer", "correct", "completion_tokens", "latency_s"} <= set(rec)
            assert 0.0 <= rec["correct"] <= 1.0 and rec["completion_tokens"] > 0
        assert 0.0 <= summary["results"][name]["score"] <= 100.0
    # constrained: every math answer boxed, every letter one of the item's
    assert all(json.loads(l)["answer"] is not None for l in (out / "math500.jsonl").open())
    for l in (out / "ceval.jsonl").open():
        assert json.loads(l)["answer"] in "ABCD"
    run = json.loads((out / "run.json").read_text())
    assert run["sampling"]["temperature"] == 0.7 and run["sampling"]["seed"] == 0
    assert run["isolation"] == isolation_level() != "none"  # the code benchmarks' sandbox
    for name in ("humaneval", "mbpp"):
        levels = {json.loads(l)["grade"]["isolation"] for l in (out / f"{name}.jsonl").open()}
        assert levels == {run["isolation"]}
    assert run["model"].endswith("tiny") and run["versions"]["sglang"] == "0.5.23"
    md = (out / "summary.md").read_text()
    assert "| gsm8k | EM | 3 |" in md and "83.6" in md and "91.7" in md
    assert f"generated code ran in the sandbox, isolation: {run['isolation']}" in md
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_free_mode_reads_answers_out_of_text(server, tmp_path):
    out = tmp_path / "free"
    r = run_eval("--base-url", server.url, "--benchmarks", "gsm8k,ceval", "--limit", "3", "--free",
                 "--max-tokens", "32", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["sampling"]["constrained"] is False


def test_a_killed_run_resumes_without_losing_or_duplicating(server, tmp_path, full_data_dir):
    out = tmp_path / "resume"
    args = ["-m", "eval", "--base-url", server.url, "--benchmarks", "mmlu_pro", "--limit", "40",
            "--concurrency", "1", "--reasoning-max-tokens", "8", "--out", str(out),
            "--data-dir", str(full_data_dir), "--no-progress"]
    first = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "MEGREZ_API_KEY": API_KEY})
    path = out / "mmlu_pro.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 8):
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = [json.loads(l) for l in path.read_text().splitlines() if l.strip().endswith("}")]
    assert 8 <= len(before) < 40
    again = run_eval(*args[2:-1])
    assert again.returncode == 0, again.stderr[-3000:]
    after = [json.loads(l) for l in path.open()]
    assert len(after) == 40 and len({r["id"] for r in after}) == 40
    assert after[: len(before)] == before  # the finished items were kept as they were
    different = run_eval(*args[2:-1], "--seed", "1")
    assert different.returncode != 0 and "holds a run with different sampling" in different.stderr
