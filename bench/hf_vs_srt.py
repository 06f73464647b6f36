"""SGLang's own model-comparison harness on the trained tiny checkpoint: HFRunner (the reference
model through transformers' generate) against SRTRunner (an SGLang engine), as SGLang's repository
tests its models (test/srt/models/test_generation_models.py), in float32 and float16.

    python -m bench.hf_vs_srt [--dtypes float32,float16] [--new-tokens 8] [--out FILE]

Prints, per dtype and prompt: output strings equal, max |prefill top-5 logprob diff|, max |decode
top-5 logprob diff|, and whether SGLang's own check (``check_close_model_outputs`` with the
tolerances of its ModelCase: 5e-2, 5e-2, ROUGE-L 1) passes. Then the near-tie analysis that
explains float16 (docs/gpu-topk.md, "SGLang's own harness"): for every prompt the routing
decisions of the float32 reference closest to a tie, and which of them, flipped, bring the float32
reference onto SGLang's prefill logprobs (SGLang's own routing is not observable from outside the
engine here: return_routed_experts does not start on the CPU engine).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass

import megrez_sglang  # noqa: F401  (configures SGLang for this host, before sglang)
from megrez_sglang.model.model_path import TRAINED_CHECKPOINT

from .report import print_table, write_json

# SGLang's DEFAULT_PROMPTS (sglang/test/runners.py) shorter than 1000 characters, as its test skips
# long prompts for models without a long context, and the model card's demo.
PROMPTS = ["The capital of the United Kingdom is", "Today is a sunny day and I like",
           "AI is a field of computer science focused on", "世界上最高的山峰是"]
NEW_TOKENS = 8
# SGLang's ModelCase defaults (test/srt/models/test_generation_models.py)
PREFILL_TOLERANCE, DECODE_TOLERANCE, ROUGE_L_TOLERANCE = 5e-2, 5e-2, 1


def load_hf_reference(dtype):
    """The reference model and tokenizer as HFRunner's model process loads them (its
    ``start_model_process``: ``from_pretrained(torch_dtype, low_cpu_mem_usage=True)`` of
    ``config.architectures[0]``, SGLang's ``get_tokenizer``), in this process. HFRunner itself
    forks a child that finds the class as ``getattr(transformers, ...)``: in the test run's process
    (engines, servers and Streamlit threads alive, SGLang's kills of child processes taking the
    resource tracker with them) that child died with exit code 1 and no traceback once in CI, so
    the harness runs HFRunner's own output collection (``HFRunner.forward_generation_raw``) here."""
    from sglang.srt.utils.hf_transformers_utils import get_tokenizer

    from megrez_sglang.model.reference import MegrezMoeForCausalLM

    path = str(TRAINED_CHECKPOINT)
    model = MegrezMoeForCausalLM.from_pretrained(path, torch_dtype=dtype, low_cpu_mem_usage=True).eval()
    return model, get_tokenizer(path, trust_remote_code=False)


def run_harness(dtype, prompts=PROMPTS, new_tokens: int = NEW_TOKENS, engine=None):
    """(HFRunner's outputs, SRTRunner's outputs) on the trained checkpoint: both sides collected
    by SGLang's own code (``HFRunner.forward_generation_raw`` on the reference model, see
    load_hf_reference; ``SRTRunner.forward_generation_raw`` on an engine). HF runs first and its
    model is dropped before SGLang starts, as in SGLang's test. With `engine` (an sglang.Engine of
    the checkpoint in `dtype`, e.g. the test suite's pooled one) the SRT side runs on it instead of
    an SRTRunner starting one: an SRTRunner's exit shuts its engine down with SGLang's kill of
    every child of the process."""
    import torch
    from sglang.test.runners import HFRunner, SRTRunner

    from megrez_sglang.serving.cpu_runtime import configure_sglang_for_host
    from megrez_sglang.serving.engine import CPU_MAX_TOTAL_TOKENS
    from megrez_sglang.serving.server import free_port

    model, tokenizer = load_hf_reference(dtype)
    with torch.no_grad():
        hf_outputs = HFRunner.forward_generation_raw(model, prompts, new_tokens, tokenizer, dtype)
    del model
    if engine is not None:
        return hf_outputs, SRTRunner.forward_generation_raw(engine, prompts, max_new_tokens=new_tokens)
    path = str(TRAINED_CHECKPOINT)
    srt_args = {}
    if configure_sglang_for_host() != "cuda":  # the CPU engine's settings (engine.engine_args)
        srt_args = dict(attention_backend="torch_native", max_total_tokens=CPU_MAX_TOTAL_TOKENS,
                        sleep_on_idle=True)
    with SRTRunner(path, torch_dtype=dtype, model_type="generation", port=free_port(),
                   context_length=1024, **srt_args) as srt:
        srt_outputs = srt.forward(prompts, max_new_tokens=new_tokens)
    return hf_outputs, srt_outputs


@dataclass
class HarnessResult:
    dtype: str
    outputs_equal: list[bool]
    prefill_diff: list[float]  # max |top-5 prefill logprob diff| per prompt
    decode_diff: list[float]
    sglang_check: str  # "pass" or SGLang's assertion message


def summarize(dtype_name: str, hf, srt) -> HarnessResult:
    import torch
    from sglang.test.runners import check_close_model_outputs

    def max_diff(a, b):
        return float((torch.tensor(a) - torch.tensor(b)).abs().max())

    try:
        with contextlib.redirect_stdout(sys.stderr):  # it prints every string and score
            check_close_model_outputs(hf, srt, PREFILL_TOLERANCE, DECODE_TOLERANCE, ROUGE_L_TOLERANCE)
        verdict = "pass"
    except AssertionError as e:
        verdict = str(e).split("\n")[0][:200]
    return HarnessResult(
        dtype_name, [a == b for a, b in zip(hf.output_strs, srt.output_strs, strict=True)],
        [max_diff(a, b) for a, b in zip(hf.top_input_logprobs, srt.top_input_logprobs, strict=True)],
        [max_diff(a, b) for a, b in zip(hf.top_output_logprobs, srt.top_output_logprobs, strict=True)],
        verdict)


# --- the near-tie analysis -----------------------------------------------------------------------

@dataclass
class NearTie:
    layer: int
    position: int
    experts: list[int]  # the float32 reference's selection
    runner_up: int  # the (k+1)-th expert, the k-th one's closest competitor
    dropped: int  # the k-th (the last one selected)
    gap: float  # float32 biased scores: k-th minus (k+1)-th


def recorded_routing(model, ids, force: dict | None = None):
    """Runs the reference on `ids` (one prompt): {(layer, position): NearTie} for every routing
    decision, and the prefill logprobs [T, vocab]. `force` {(layer, position): NearTie}: there the
    runner-up replaces the k-th expert (weights by the reference's rule on the new set)."""
    import torch

    from megrez_sglang.model import reference

    record, layer_of = {}, {}
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "gate"):
            layer_of[id(layer.mlp.gate)] = i
    original = reference.Router.forward

    def forward(router, router_input):
        logits = torch.nn.functional.linear(router_input.float(), router.weight.float())  # [T, E]
        k = router.config.num_experts_per_tok
        top = (logits.sigmoid() + router.e_score_correction_bias.float()).topk(k + 1, dim=-1)
        layer = layer_of[id(router)]
        weights, experts = reference.select_experts(logits, router.e_score_correction_bias, router.config)
        for pos in range(logits.shape[0]):
            tie = NearTie(layer, pos, sorted(experts[pos].tolist()), int(top.indices[pos, k]),
                          int(top.indices[pos, k - 1]), float(top.values[pos, k - 1] - top.values[pos, k]))
            record[(layer, pos)] = tie
            if force and (layer, pos) in force:
                experts[pos][experts[pos] == tie.dropped] = tie.runner_up
                w = logits[pos].sigmoid()[experts[pos]]
                weights[pos] = w / w.sum() if router.config.norm_topk_prob else w
        return weights, experts

    reference.Router.forward = forward
    try:
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    finally:
        reference.Router.forward = original
    return record, logprobs


def top_logprobs_diff(logprobs, top_logprobs) -> float:
    """max |difference| between the reference's top-5 prefill logprobs and a runner's."""
    import torch

    top = logprobs.topk(len(top_logprobs[0]), dim=-1).values
    return float((top - torch.tensor(top_logprobs)).abs().max())


def explain_by_near_ties(prompt_ids: list[int], model32, srt_top_logprobs, candidates: int = 8,
                         max_flips: int = 2) -> tuple[float, list[NearTie], float]:
    """How far the float32 reference's prefill is from SGLang's (float16) top-5 logprobs, and
    after forcing the best set of at most `max_flips` flips among its `candidates` closest routing
    decisions: (diff without flips, the flips, diff with them)."""
    import itertools

    record, logprobs = recorded_routing(model32, prompt_ids)
    baseline = top_logprobs_diff(logprobs, srt_top_logprobs)
    closest = sorted(record.values(), key=lambda t: t.gap)[:candidates]
    best, best_diff = [], baseline
    for n in range(1, max_flips + 1):
        for flips in itertools.combinations(closest, n):
            _, forced = recorded_routing(model32, prompt_ids, {(t.layer, t.position): t for t in flips})
            diff = top_logprobs_diff(forced, srt_top_logprobs)
            if diff < best_diff:
                best, best_diff = list(flips), diff
    return baseline, best, best_diff


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    p.add_argument("--out")
    args = p.parse_args()
    import torch

    rows, record, runs = [], {"prompts": PROMPTS, "new_tokens": args.new_tokens, "harness": {}}, {}
    for name in args.dtypes.split(","):
        hf, srt = runs[name] = run_harness(getattr(torch, name), new_tokens=args.new_tokens)
        result = summarize(name, hf, srt)
        record["harness"][name] = result.__dict__
        for i, prompt in enumerate(PROMPTS):
            rows.append([name, prompt[:28], "yes" if result.outputs_equal[i] else "NO",
                         f"{result.prefill_diff[i]:.2e}", f"{result.decode_diff[i]:.2e}"])
        rows.append([name, "SGLang's check_close_model_outputs", result.sglang_check[:60], "", ""])
    print_table("SGLang's harness: HFRunner vs SRTRunner, trained tiny checkpoint",
                ["dtype", "prompt", "outputs equal", "max |d prefill|", "max |d decode|"], rows)

    model32, tokenizer = load_hf_reference(torch.float32)
    tie_rows, record["near_ties"] = [], {}
    for name, (_, srt) in runs.items():
        for prompt, srt_top in zip(PROMPTS, srt.top_input_logprobs, strict=True):
            baseline, flips, explained = explain_by_near_ties(tokenizer.encode(prompt), model32, srt_top)
            record["near_ties"].setdefault(name, {})[prompt] = {
                "float32_reference_vs_srt": baseline, "flips": [f.__dict__ for f in flips],
                "with_flips_forced": explained}
            tie_rows.append([name, prompt[:28], f"{baseline:.2e}",
                             ", ".join(f"layer {f.layer} token {f.position}: {f.gap:.1e}" for f in flips)
                             or "-", f"{explained:.2e}"])
    print_table("SRTRunner's prefill (top-5 logprobs) against the float32 reference, and with its "
                "closest routing decisions flipped", ["dtype", "prompt", "max |diff|",
                "flips that explain it (float32 score gap)", "max |diff| with them"], tie_rows)
    write_json("hf_vs_srt", record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
