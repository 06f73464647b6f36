"""The model along SGLang's GPU branches, on the CPU (megrez_sglang.model.gpu_branches: the Triton
kernels in Triton's interpreter), against the float32 reference: the trained tiny checkpoint, its
shipped config in float32, a routing variant in float16, constrained decoding with the Triton
bitmask, and a negative control with the publisher's CUDA defect (the routed scaling factor given
to the fused-MoE kernel as well). Few prompts and tokens: a forward takes seconds in the
interpreter; `python -m bench.gpu_branches` runs the whole matrix (configs x dtypes x tp)."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from megrez_sglang.model import gpu_branches
from megrez_sglang.model.fidelity import (
    assert_same_greedy,
    compare_greedy,
    prompt_ids,
    reference_greedy,
    sglang_greedy,
)
from megrez_sglang.model.model_path import TRAINED_CHECKPOINT
from megrez_sglang.programs.grammars import BOXED_REGEX, answer_json_schema_str

PROMPTS = 2
NEW_TOKENS = 4
# Changes routing in each of its three ways at once (the benchmark runs them one by one).
ROUTING_VARIANT = dict(routed_scaling_factor=2.5, n_group=2, topk_group=1, norm_topk_prob=False)
# Float32: SGLang's fused-MoE kernel computes float32 inputs through float16 (max |dlogprob|
# ~1e-4 measured). Float16 against the float32 reference: fp16 rounding throughout.
TOLERANCES = {"float32": dict(logprob_tol=1e-3, tie_tol=1e-3),
              "float16": dict(logprob_tol=3e-2, tie_tol=3e-2)}
# The kernels and stand-ins a forward along the GPU branches must have run in the scheduler.
GPU_PATH = {"fused_experts_impl", "moe_fused_gate", "moe_align_block_size", "silu_and_mul",
            "extend_attention_fwd", "decode_attention_fwd"}


def config_copy(source, destination, architecture: str | None = None, **fields) -> str:
    """A copy of a checkpoint folder with config.json fields changed (the weights unchanged)."""
    import shutil

    shutil.copytree(source, destination)
    config_file = destination / "config.json"
    config = json.loads(config_file.read_text())
    config.update(fields)
    if architecture:
        config["architectures"] = [architecture]
    config_file.write_text(json.dumps(config, indent=2))
    return str(destination)


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu-branches") / "trace.txt"
    os.environ[gpu_branches.TRACE_ENV] = str(path)
    yield path
    del os.environ[gpu_branches.TRACE_ENV]


def gpu_branch_engine(engines, path: str, dtype: str, **kwargs):
    with gpu_branches.enabled(dtype):
        return engines.get(path, dtype=dtype, **gpu_branches.ENGINE_ARGS, **kwargs)


def traced(trace_file) -> dict[int, set[str]]:
    events: dict[int, set[str]] = {}
    for line in trace_file.read_text().splitlines() if trace_file.exists() else []:
        pid, name = line.split(" ", 1)
        events.setdefault(int(pid), set()).add(name)
    return events


def scheduler_ran(trace_file, names: set[str]) -> bool:
    return any(names <= ran for ran in traced(trace_file).values())


@pytest.fixture(scope="module")
def prompts():
    return prompt_ids(str(TRAINED_CHECKPOINT))[:PROMPTS]


@pytest.fixture(scope="module")
def shipped_reference(prompts):
    return reference_greedy(str(TRAINED_CHECKPOINT), prompts, new_tokens=NEW_TOKENS)


def constrained_texts(engine) -> list[str]:
    """A \\boxed{} answer and a JSON-schema multiple choice, greedy (the programs' constraints:
    megrez_sglang.programs.grammars). One request at a time: batched, SGLang 0.5.23's Triton
    bitmask kernel masks the wrong columns of the second row of float32 logits whose vocabulary the
    LM head pads (it takes the logits' width for their row stride; see
    test_gpu_branch_standins.py), which is a defect of that kernel, not of this model."""
    params = {"temperature": 0.0, "max_new_tokens": 8}
    boxed = engine.generate("3+4=", {**params, "regex": BOXED_REGEX})["text"]
    choice = engine.generate("问题：1+1=？ A. 1 B. 2 C. 3 D. 4\n答案：",
                             {**params, "json_schema": answer_json_schema_str("ABCD")})["text"]
    return [boxed, choice]


def test_constrained_decoding_on_the_triton_bitmask_gives_the_cpu_branch_text(engines, trace_file):
    """xgrammar's token bitmask applied by SGLang's Triton kernel (its CUDA branch) gives the same
    texts as the CPU branch (xgrammar's CPU apply)."""
    cpu = constrained_texts(engines.get(str(TRAINED_CHECKPOINT), dtype="float32"))
    gpu = constrained_texts(gpu_branch_engine(engines, str(TRAINED_CHECKPOINT), "float32"))
    assert gpu == cpu
    assert cpu[0].startswith("\\boxed{") and cpu[1].startswith('{') and '"answer' in cpu[1]
    assert scheduler_ran(trace_file, {"apply_token_bitmask_inplace_triton"})


def test_shipped_config_float32_equals_the_reference(engines, trace_file, prompts, shipped_reference):
    engine = gpu_branch_engine(engines, str(TRAINED_CHECKPOINT), "float32")
    got = sglang_greedy(engine, prompts, batched=True, new_tokens=NEW_TOKENS)
    assert_same_greedy(shipped_reference, got, **TOLERANCES["float32"])
    assert scheduler_ran(trace_file, GPU_PATH), traced(trace_file)


def test_routing_variant_float16_equals_the_reference(engines, trace_file, prompts, shipped_reference,
                                                      tmp_path):
    path = config_copy(TRAINED_CHECKPOINT, tmp_path / "variant", **ROUTING_VARIANT)
    reference = reference_greedy(path, prompts, new_tokens=NEW_TOKENS)
    # the variant changes the reference's own tokens, so the check below sees routing
    assert [r.tokens for r in reference] != [r.tokens for r in shipped_reference]
    got = sglang_greedy(gpu_branch_engine(engines, path, "float16"), prompts, batched=True,
                        new_tokens=NEW_TOKENS)
    assert_same_greedy(reference, got, **TOLERANCES["float16"])


def test_the_publishers_double_scaling_on_the_gpu_branch_is_caught(engines, trace_file, prompts, tmp_path,
                                                                   monkeypatch):
    """Negative control: a copy of the path with the routed scaling factor also given to the
    fused-MoE kernel (tests/gpu_branch_faults) fails the comparison by far."""
    path = config_copy(TRAINED_CHECKPOINT, tmp_path / "double-scaled",
                       architecture="MegrezMoeDoubleScaledForCausalLM", **ROUTING_VARIANT)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    reference = reference_greedy(path, prompts, model=model, new_tokens=NEW_TOKENS)
    monkeypatch.setenv("SGLANG_EXTERNAL_MODEL_PACKAGE", "tests.gpu_branch_faults")
    got = sglang_greedy(gpu_branch_engine(engines, path, "float32"), prompts, batched=True,
                        new_tokens=NEW_TOKENS)
    comparisons = compare_greedy(reference, got)
    assert max(c.max_logprob_diff for c in comparisons) > 100 * TOLERANCES["float32"]["logprob_tol"]
    with pytest.raises(AssertionError, match="logprobs differ|diverges"):
        assert_same_greedy(reference, got, **TOLERANCES["float32"])
    assert scheduler_ran(trace_file, {"moe_sum_reduce_triton"})  # the kernel's scaling ran
