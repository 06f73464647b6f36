"""The trained tiny Megrez2 (megrez_sglang/checkpoints/tiny-trained): what it is, that its training
still reproduces, and that it answers, through every path a user takes.

Quick: the committed checkpoint's layout and features, the reproduction of its first training
steps, the held-out split's separation from the training corpus, the default model path.
Engine (bfloat16, as served): greedy tokens equal the reference model's over held-out prompts;
held-out accuracy and the unconstrained replies' format. Own server (float32, so that the
comparison is exact): `python -m eval` on the held-out split equals, item by item, the reference
model's generate() graded by the same benchmark code; under the grammars every reply is
well-formed. The main job with no arguments answers the card's demos.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from eval import BENCHMARKS
from eval.benchmark import Sample
from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.model.fidelity import Greedy, compare_greedy, reference_greedy
from megrez_sglang.model.model_path import TRAINED_CHECKPOINT, resolve_model_path
from megrez_sglang.model.reference import checkpoint_layout
from megrez_sglang.training.tiny_corpus import (
    CARD_CHAT,
    CARD_COMPLETION,
    held_out_items,
    is_held_out,
    training_item,
)
from megrez_sglang.training.train_tiny import Encoder, Recipe, greedy_replies, train, write_trained_checkpoint

from .conftest import HELD_OUT_ITEMS, ROOT, run_eval

CHECKPOINT = str(TRAINED_CHECKPOINT)
PROVENANCE = json.loads((TRAINED_CHECKPOINT / "megrez_sglang.json").read_text())
HELD_OUT = {"math": "tiny_math", "choice": "tiny_choice"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The reference model is tiny: one thread is faster than two fighting over a busy machine's
    cores (two threads made a 72-token generate() 30x slower here), and training reproduces
    only at the thread count it was recorded with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(CHECKPOINT)


# --- quick: the committed checkpoint ----------------------------------------------------------------


def test_every_megrez2_feature_is_on():
    config = MegrezMoeConfig.from_pretrained(CHECKPOINT)
    assert config.first_k_dense_replace == 1 and config.num_hidden_layers == 7  # dense layer 0
    assert config.experts_shared_frequency == 3 and config.num_expert_groups == 2
    assert config.pre_gate is True and config.n_shared_experts >= 1
    assert (config.topk_method, config.scoring_func) == ("noaux_tc", "sigmoid")


def test_weights_are_bf16_in_the_real_layout_under_10_mb():
    config = MegrezMoeConfig.from_pretrained(CHECKPOINT)
    files = list(TRAINED_CHECKPOINT.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    tensors = {}
    for f in files:
        with safe_open(f, "pt") as st:
            tensors.update({name: st.get_tensor(name) for name in st.keys()})
    assert {n: t.shape for n, t in tensors.items()} == checkpoint_layout(config)
    for name, t in tensors.items():
        expected = torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16
        assert t.dtype == expected, name


def test_correction_biases_were_trained_per_layer():
    """Aux-loss-free balancing moved every MoE layer's bias, each layer its own way (layers of a
    sharing group included): a loader that used the owner's bias for the group would differ."""
    with safe_open(next(TRAINED_CHECKPOINT.glob("*.safetensors")), "pt") as st:
        biases = [st.get_tensor(f"model.layers.{l}.mlp.gate.e_score_correction_bias") for l in range(1, 7)]
    assert all(b.abs().max() > 0.01 for b in biases)
    assert all(not torch.equal(biases[0], b) for b in biases[1:3])  # group {1, 2, 3}
    assert all(not torch.equal(biases[3], b) for b in biases[4:6])  # group {4, 5, 6}


def test_provenance_says_trained_and_how():
    assert PROVENANCE["weights"] == "trained"
    assert PROVENANCE["command"].startswith("python -m megrez_sglang.training.train_tiny ")
    assert f"--seed {PROVENANCE['seed']}" in PROVENANCE["command"]
    assert f"--threads {PROVENANCE['threads']}" in PROVENANCE["command"]


def test_committed_checkpoint_scores_on_the_held_out_split():
    """The reference model's held-out accuracy recorded at training time (bfloat16, greedy)."""
    accuracy = PROVENANCE["held_out_reference_bf16"]
    assert accuracy["math"]["accuracy"] >= 50  # issue #12's targets
    assert accuracy["choice"]["accuracy"] >= 75  # chance: 25


def test_the_default_model_path_is_the_trained_checkpoint():
    assert resolve_model_path(None) == CHECKPOINT


def test_chat_template_inserts_the_checkpoints_default_system_prompt():
    tok = load_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|role_start|>system<|role_end|>你是Megrez2，将针对用户的问题给出详细的、积极的回答。"
                    "<|turn_end|><|role_start|>user<|role_end|>你好<|turn_end|>"
                    "<|role_start|>assistant<|role_end|>")


FIRST_STEPS = 2


@pytest.fixture(scope="module")
def first_steps():
    """The committed recipe's first training steps: (model, config, raw tokenizer, tokenizer,
    losses, digests)."""
    recipe = Recipe(**{k: v for k, v in PROVENANCE["recipe"].items() if k in Recipe.__dataclass_fields__})
    return train(recipe, stop_after=FIRST_STEPS, log=lambda line: None)


def test_training_reproduces_the_committed_first_steps(first_steps):
    """The script still makes these weights: its first steps (tokenizer, corpus, initialisation,
    optimiser, bias updates) give the losses and weight fingerprints recorded at training time."""
    *_, tokenizer, losses, digests = first_steps
    committed_tokenizer = json.loads((TRAINED_CHECKPOINT / "tokenizer.json").read_text())
    assert json.loads(tokenizer.backend_tokenizer.to_str()) == committed_tokenizer
    assert losses == pytest.approx(PROVENANCE["first_losses"][:FIRST_STEPS], rel=1e-5)
    assert digests == pytest.approx(PROVENANCE["first_digests"][:FIRST_STEPS], rel=1e-6)


def test_the_trainer_writes_the_committed_layout(first_steps, tmp_path):
    """What the trainer writes, given the committed provenance, is the committed folder file for
    file (every file but the weights byte-identical; the weights at the same names, shapes and
    dtypes)."""
    model, config, raw_tokenizer, *_ = first_steps
    write_trained_checkpoint(tmp_path, model, config, raw_tokenizer, PROVENANCE)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(p.name for p in TRAINED_CHECKPOINT.iterdir())
    for name in files:
        if not name.endswith(".safetensors"):
            assert (tmp_path / name).read_bytes() == (TRAINED_CHECKPOINT / name).read_bytes(), name

    def tensors(folder):
        with safe_open(folder / "model.safetensors", "pt") as f:
            return {name: (f.get_slice(name).get_shape(), f.get_slice(name).get_dtype()) for name in f.keys()}

    assert tensors(tmp_path) == tensors(TRAINED_CHECKPOINT)


# --- quick: the held-out split ------------------------------------------------------------------------


def test_held_out_items_are_never_training_items():
    rng = random.Random(0)
    trained = {training_item(rng, kind).key for kind in ("math", "choice") for _ in range(5000)}
    for kind in ("math", "choice"):
        held = held_out_items(kind, 64)
        assert all(is_held_out(item.key) for item in held)
        assert not {item.key for item in held} & trained
    # math holds out the numbers themselves: no training item, in either language, uses them
    assert not {k[1:] for k in trained if k[0] == "math"} & {i.key[1:] for i in held_out_items("math", 64)}


def test_held_out_split_is_balanced_and_generated_without_data_files(tmp_path):
    math = BENCHMARKS["tiny_math"]().load(tmp_path / "no-data-here")
    choice = BENCHMARKS["tiny_choice"]().load(tmp_path / "no-data-here")
    assert len(math) == len(choice) == 64
    assert sum(i.meta["lang"] == "zh" for i in math) == 32
    assert {i.gold for i in choice} == set("ABCD") and sum(i.gold == "A" for i in choice) == 16
    assert math[0].prompt.endswith("\\boxed{}中。") and math[1].prompt.endswith("within \\boxed{}.")
    assert choice[0].prompt.endswith('例如 "answer": "C" 。')


def test_held_out_grading():
    math, choice = BENCHMARKS["tiny_math"](), BENCHMARKS["tiny_choice"]()
    item = math.load()[0]
    text = f"…\n\\boxed{{{item.gold}}}"
    assert math.grade(item, [Sample(text, math.extract(item, text), 1, 0.0)])["correct"] == 1.0
    assert math.extract(item, "so it is 12") is None  # no box, no answer
    item = choice.load()[0]
    text = f'…\n{{"answer": "{item.gold}"}}'
    assert choice.grade(item, [Sample(text, choice.extract(item, text), 1, 0.0)])["correct"] == 1.0


# --- engine: bfloat16, as served ---------------------------------------------------------------------

# bfloat16 keeps 8 bits of mantissa: logits of magnitude 8-32 are rounded by up to 0.03-0.125, and
# SGLang's kernels sum in another order than the reference. Where the reference's top two
# logits are closer than this, greedy decoding may take either (a documented near-tie).
BF16_TIE_TOL = 0.25
FIDELITY_ITEMS = 6  # per kind
STOP_TOKENS = ("<|turn_end|>", "<|eos|>")


def held_out_benchmarks():
    """(kind, benchmark, its eval items, the generator's items) for both held-out benchmarks."""
    for kind, name in HELD_OUT.items():
        bench = BENCHMARKS[name]()
        yield kind, bench, bench.load(), held_out_items(kind, len(bench.load()))


@pytest.fixture(scope="module")
def engine_replies(engines):
    """Every held-out item through sglang.Engine (bfloat16, the checkpoint's chat template),
    greedy and at the card's sampling (temperature 0.7, top_p 0.9, fixed seeds): kind -> list of
    {"ids": prompt ids, "greedy": output, "sampled": output}."""
    engine = engines.get(CHECKPOINT)
    encoder = Encoder(load_tokenizer())
    replies = {}
    for kind, bench, _, tasks in held_out_benchmarks():
        prompts = [encoder.prompt_ids(t) for t in tasks]
        greedy = engine.generate(input_ids=prompts, sampling_params={
            "temperature": 0.0, "max_new_tokens": bench.max_tokens})
        sampled = engine.generate(input_ids=prompts, sampling_params=[
            {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": bench.max_tokens, "sampling_seed": i}
            for i in range(len(prompts))])
        replies[kind] = [{"ids": p, "greedy": g, "sampled": s}
                         for p, g, s in zip(prompts, greedy, sampled, strict=True)]
    return replies


def sglang_tokens(output: dict) -> list[int]:
    """SGLang's generated ids, with the stop token that ended the reply (as the reference's)."""
    tokens = list(output["output_ids"])
    finish = output["meta_info"]["finish_reason"]
    matched = finish.get("matched") if finish["type"] == "stop" else None
    if isinstance(matched, int) and tokens[-1:] != [matched]:
        tokens.append(matched)
    return tokens


def test_bf16_greedy_tokens_match_the_reference_on_held_out_prompts(engine_replies):
    """SGLang's greedy tokens (bfloat16) equal the reference model's (bfloat16) up to the reply's
    stop token, allowing a divergence only at a documented near-tie (megrez_sglang.model.fidelity's rule)."""
    tok = load_tokenizer()
    stop_ids = {tok.convert_tokens_to_ids(t) for t in STOP_TOKENS}
    chosen = [r for kind in HELD_OUT for r in engine_replies[kind][:FIDELITY_ITEMS]]
    got = [sglang_tokens(r["greedy"]) for r in chosen]
    expected = reference_greedy(CHECKPOINT, [r["ids"] for r in chosen], dtype=torch.bfloat16,
                                new_tokens=max(map(len, got)) + 1)
    reference_cut, sglang_cut = [], []
    for ref, tokens in zip(expected, got, strict=True):
        ends = next((i + 1 for i, t in enumerate(ref.tokens) if t in stop_ids), len(ref.tokens))
        n = min(ends, len(tokens))  # a reply that stops early differs at its stop token
        reference_cut.append(Greedy(ref.tokens[:n], ref.logprobs[:n], ref.step_logits[:n]))
        sglang_cut.append((tokens[:n], ref.logprobs[:n]))
    comparisons = compare_greedy(reference_cut, sglang_cut)
    for c in comparisons:
        print(f"{c.describe()}: {tok.decode(chosen[c.prompt]['ids'])[-60:]!r}")
    problems = [p for c in comparisons
                for p in c.problems(float("inf"), BF16_TIE_TOL, compare_logprobs=False)]
    assert not problems, "; ".join(problems)
    near_ties = [c for c in comparisons if c.diverged_at is not None]
    print(f"bf16 greedy: {len(chosen) - len(near_ties)}/{len(chosen)} replies token-identical, "
          f"{len(near_ties)} diverged at a near-tie (top-2 logit gap <= {BF16_TIE_TOL})")
    assert len(near_ties) <= 1


def graded(kind: str, mode: str, engine_replies) -> dict:
    """Accuracy (%) by the eval's benchmark code, and the share (%) of well-formed replies
    (math: a balanced last \\boxed{} holding a number; choice: a line that parses as
    {"answer": <one of the item's letters>})."""
    bench = BENCHMARKS[HELD_OUT[kind]]()
    items = bench.load()
    correct = formed = 0
    for item, r in zip(items, engine_replies[kind], strict=True):
        text = r[mode]["text"]
        answer = bench.extract(item, text)
        correct += bench.grade(item, [Sample(text, answer, 0, 0.0)])["correct"]
        formed += well_formed(kind, text, item.letters)
    n = len(items)
    return {"accuracy": round(100 * correct / n, 1), "well_formed": round(100 * formed / n, 1), "n": n}


def well_formed(kind: str, text: str, letters) -> bool:
    from megrez_sglang.programs.answers import last_boxed

    if kind == "math":
        boxed = last_boxed(text)
        return boxed is not None and boxed.strip().lstrip("-").isdigit()
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and set(value) == {"answer"} and value["answer"] in letters:
            return True
    return False


def test_held_out_accuracy_through_sglang_greedy(engine_replies):
    result = {kind: graded(kind, "greedy", engine_replies) for kind in HELD_OUT}
    print(f"held-out, SGLang bf16 greedy, unconstrained: {result}")
    assert result["math"]["accuracy"] >= 50  # issue #12's targets
    assert result["choice"]["accuracy"] >= 75  # chance: 25


def test_unconstrained_format_share_is_measured_at_the_cards_sampling(engine_replies):
    """Without grammars the format is the model's own habit: measured at the card's sampling,
    next to the 100 % the grammars guarantee (test_grammars_make_every_reply_well_formed)."""
    result = {kind: graded(kind, "sampled", engine_replies) for kind in HELD_OUT}
    print(f"held-out, SGLang bf16, temperature 0.7 top_p 0.9, unconstrained: {result}")
    assert result["math"]["well_formed"] >= 80 and result["choice"]["well_formed"] >= 80


# --- the main job (its own engine) ---------------------------------------------------------------------

@pytest.mark.slow
def test_the_main_job_answers_the_cards_demos(request):
    """infer_sglang_offline.py with no arguments: the trained checkpoint, the card's sampling."""
    request.getfixturevalue("engines").close()  # one engine alive at a time on the machine
    r = subprocess.run([sys.executable, str(ROOT / "infer_sglang_offline.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    print(r.stdout)
    blocks = r.stdout.split("[chat] ")
    completion, chat = blocks[0], blocks[1]
    assert completion.startswith(f"[completion] {CARD_COMPLETION}\n")
    assert "珠穆朗玛峰" in completion.split("\n", 1)[1]
    assert chat.startswith(f"{CARD_CHAT}\n")
    reply = chat.split("\n", 1)[1].strip()
    assert "珠穆朗玛峰" in reply and reply.endswith("。"), reply


# --- the trained checkpoint's server (float32, conftest.trained_server): the whole pipeline ----------


def test_eval_through_the_server_equals_the_reference_item_by_item(trained_free_greedy_eval):
    """`python -m eval --free --temperature 0` through launch_server.sh against the same prompts
    run through the reference model's generate() (the checkpoint's chat template, greedy,
    stopping at the stop tokens) and graded by the same benchmark code."""
    from transformers import AutoModelForCausalLM

    served = trained_free_greedy_eval
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    encoder = Encoder(load_tokenizer())
    for kind, name in HELD_OUT.items():
        bench = BENCHMARKS[name]()
        items = bench.load()[:HELD_OUT_ITEMS]
        replies = greedy_replies(model, encoder, held_out_items(kind, HELD_OUT_ITEMS),
                                 max_new_tokens=bench.max_tokens)
        for item, text in zip(items, replies, strict=True):
            answer = bench.extract(item, text)
            expected = {"output": text, "answer": answer,
                        "correct": bench.grade(item, [Sample(text, answer, 0, 0.0)])["correct"]}
            got = {k: served[name][item.id][k] for k in expected}
            assert got == expected, (f"{name} item {item.id} differs:\nprompt: {item.prompt!r}\n"
                                     f"server:    {got}\nreference: {expected}")


def test_grammars_make_every_reply_well_formed(trained_server, trained_free_greedy_eval, tmp_path):
    """The eval's constrained mode (megrez_sglang.programs' recipes: \\boxed regex, answer-object
    JSON schema) at temperature 0: every item has an answer of the right form."""
    served = run_eval(trained_server, tmp_path / "run", "--temperature", "0")
    shares = {}
    for name, records in served.items():
        answers = [r["answer"] for r in records.values()]
        assert len(answers) == HELD_OUT_ITEMS
        if name == "tiny_math":
            assert all(a is not None and a.strip().lstrip("-").isdigit() for a in answers), answers
        else:
            assert all(a in "ABCD" and len(a) == 1 for a in answers), answers
        shares[name] = 100 * sum(r["correct"] for r in records.values()) / len(records)
    print(f"held-out under the grammars (float32, greedy): 100 % well-formed, accuracy {shares}")
    # The grammars change the form, never the answer: greedy, each item's answer is the one the
    # model writes unconstrained (whose replies are all well-formed, see above).
    free = trained_free_greedy_eval
    for name, records in served.items():
        changed = {i: (free[name][i]["answer"], r["answer"]) for i, r in records.items()
                   if r["answer"] != free[name][i]["answer"]}
        assert not changed, f"{name}: answers the grammar changed (free, constrained): {changed}"
