"""The GPU branches of SGLang, executed on the CPU: Triton's interpreter runs the kernels.

Everything else in the suite runs SGLang's CPU branches (``forward_native``, torch-native
attention), but the code a GPU takes is different code: the publisher's own defect (the routed
scaling factor applied twice) lived in a CUDA-only branch. This mode runs the model along the
CUDA branches of SGLang 0.5.23 on a machine without a GPU, with ``TRITON_INTERPRET=1``:

* MoE: ``UnquantizedFusedMoEMethod.forward_cuda`` -> the Triton MoE runner -> ``fused_experts_impl``
  with the module's CUDA branches on (``fused_moe_kernel`` in the interpreter);
* top-k: ``TopK.forward_cuda`` -> ``biased_grouped_topk_gpu`` -> SGLang's Triton router
  (``moe_fused_gate``), the branch a GPU takes where FlashInfer's ``fused_topk_deepseek`` (a CUDA
  kernel, not runnable here) does not;
* attention: ``attention_backend="triton"`` (``extend_attention_fwd`` / ``decode_attention_fwd``);
* constrained decoding: xgrammar's token bitmask applied by SGLang's Triton kernel
  (``apply_token_bitmask_inplace_triton``), as on CUDA.

The few CUDA-only (non-Triton) ops on that path are replaced by the torch stand-ins below, each
written to the contract of the kernel it replaces (tests/test_gpu_branch_standins.py checks
them). Everything this mode changes in SGLang is listed in ``PRIVATE_STATE``, the one place that
names SGLang's private module state; it is written for SGLang 0.5.23 and refuses any other.

How it is switched on: ``gpu_branch_environment()`` (before the engine starts) returns the two
variables SGLang's processes need, ``TRITON_INTERPRET=1`` and ``MEGREZ_GPU_BRANCHES=1``; this
package's SGLang plugin (serving.registration.register, run in every SGLang process) then calls
``install()`` in the scheduler, where the model runs. It never activates where torch sees a GPU
(there the real kernels run), and a refusal is one line (GpuBranchesRefused / SystemExit).

What it cannot check: FlashInfer's kernels (attention, ``fused_topk_deepseek``), CUDA graphs,
the real CUDA elementwise kernels (the stand-ins replace them), and bfloat16: ``tl.dot`` on bf16
is wrong in Triton's interpreter (triton issue 11584) and its bf16 casts truncate, so only
float32 and float16 are faithful (``enabled("bfloat16")`` is refused, and an engine computing in
bfloat16 anyway stops at its first MoE call with that reason).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

ENABLE_ENV = "MEGREZ_GPU_BRANCHES"
INTERPRET_ENV = "TRITON_INTERPRET"
# A file each SGLang process appends "<pid> <name>" to the first time a kernel or stand-in of the
# path runs there: tests prove with it that the path they check was taken.
TRACE_ENV = "MEGREZ_GPU_BRANCHES_TRACE"
# What an engine needs beside the environment: SGLang's Triton attention backend.
ENGINE_ARGS = {"attention_backend": "triton"}
SGLANG_VERSION = "0.5.23"
# The tuned-config lookup of SGLang's fused MoE reads the GPU's name (config files are named
# "E=..,N=..,device_name=NVIDIA_H100_80GB_HBM3.json"); the GPU this mode stands in for.
DEVICE_NAME = "NVIDIA H100 80GB HBM3"
FAITHFUL_DTYPES = (torch.float32, torch.float16)


class GpuBranchesRefused(RuntimeError):
    """The GPU-branch mode cannot run here (the message is one line saying why)."""


_traced_here: set[str] = set()


def trace(name: str) -> None:
    """Record, once per process, that `name` ran (where TRACE_ENV names a file)."""
    path = os.environ.get(TRACE_ENV)
    if path and name not in _traced_here:
        _traced_here.add(name)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {name}\n")


def _traced(attribute: str):
    """The module's function `attribute`, recording its first call (trace)."""
    def value(module):
        function = getattr(module, attribute)

        @functools.wraps(function)
        def traced(*args, **kwargs):
            trace(attribute)
            return function(*args, **kwargs)
        return traced
    return value


# --- the torch stand-ins for the CUDA-only ops on the path -------------------------------------


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int,
                         sorted_token_ids: torch.Tensor, experts_ids: torch.Tensor,
                         num_tokens_post_pad: torch.Tensor, cumsum_buffer: torch.Tensor,
                         pad_sorted_token_ids: bool = False, ignore_invalid_expert: bool = False) -> None:
    """Stand-in for ``sglang.kernels.ops.moe.moe_align_block_size`` (sgl_kernel's CUDA kernel).

    The "+1 offset" bucket convention: `num_experts` is the bucket count E + 1; expert id e goes
    to bucket e + 1 and -1 (an expert of another rank) to bucket 0. Every bucket is padded to a
    multiple of `block_size`, buckets in order; `experts_ids[b]` is the bucket of block b minus 1
    (-1: a filtered block, skipped by fused_moe); `num_tokens_post_pad[0]` the padded total;
    `cumsum_buffer[i]` the padded start of bucket i (and [buckets] the total). Pad slots of
    `sorted_token_ids` hold `topk_ids.numel()` (the whole buffer with `pad_sorted_token_ids`, as
    the kernel pre-fills it); within a bucket, pairs keep their flattened order (the kernel's
    order there depends on atomics; fused_moe does not depend on it)."""
    trace("moe_align_block_size")
    if ignore_invalid_expert:
        raise NotImplementedError("moe_align_block_size stand-in: ignore_invalid_expert is not on "
                                  "the path this mode runs")
    flat = topk_ids.reshape(-1).to(torch.int64)
    numel = flat.numel()
    bucket = flat + 1
    if numel and (int(bucket.min()) < 0 or int(bucket.max()) >= num_experts):
        raise ValueError(f"moe_align_block_size: expert ids must lie in [-1, {num_experts - 2}]")
    counts = torch.bincount(bucket, minlength=num_experts)
    padded = (counts + block_size - 1) // block_size * block_size
    starts = torch.cumsum(padded, 0) - padded
    total = int(padded.sum())
    if total > sorted_token_ids.numel() or total // block_size > experts_ids.numel():
        raise ValueError("moe_align_block_size: the output buffers are too small")
    if pad_sorted_token_ids:
        sorted_token_ids.fill_(numel)
    else:
        sorted_token_ids[:total] = numel
    order = torch.sort(bucket, stable=True).indices
    sorted_bucket = bucket[order]
    first = torch.cumsum(counts, 0) - counts  # where each bucket begins among the sorted pairs
    rank = torch.arange(numel, device=flat.device) - first[sorted_bucket]
    sorted_token_ids[starts[sorted_bucket] + rank] = order.to(sorted_token_ids.dtype)
    blocks = torch.repeat_interleave(torch.arange(num_experts, device=flat.device) - 1,
                                     padded // block_size)
    experts_ids[: blocks.numel()] = blocks.to(experts_ids.dtype)
    num_tokens_post_pad[0] = total
    cumsum_buffer[:num_experts] = starts.to(cumsum_buffer.dtype)
    cumsum_buffer[num_experts] = total


def silu_and_mul(input: torch.Tensor, out: torch.Tensor | None = None,
                 expert_ids: torch.Tensor | None = None, expert_step: int = 1, *,
                 sorted_token_ids: torch.Tensor | None = None,
                 num_tokens_post_padded: torch.Tensor | None = None,
                 num_valid_tokens: int = 0) -> torch.Tensor:
    """Stand-in for ``sglang.kernels.ops.activation.activation.silu_and_mul`` (a CUDA JIT
    kernel): out = silu(x[..., :d]) * x[..., d:], computed in float32 and stored in out's dtype.
    With `expert_ids`, row r is left unwritten where ``expert_ids[r // expert_step] == -1``."""
    trace("silu_and_mul")
    if sorted_token_ids is not None:
        raise NotImplementedError("silu_and_mul stand-in: the sorted (TMA) row filter is not on "
                                  "the path this mode runs")
    d = input.shape[-1] // 2
    if out is None:
        out = input.new_empty(*input.shape[:-1], d)
    x = input.float()
    value = (F.silu(x[..., :d]) * x[..., d:]).to(out.dtype)
    if expert_ids is None:
        out.copy_(value)
    else:
        rows = torch.arange(input.shape[0], device=input.device) // expert_step
        keep = expert_ids.reshape(-1)[rows] != -1
        out[keep] = value[keep]
    return out


def moe_sum_reduce(input: torch.Tensor, output: torch.Tensor, routed_scaling_factor: float) -> None:
    """Stand-in for sgl_kernel's ``moe_sum_reduce`` (CUDA): output[t] = routed_scaling_factor *
    sum_k input[t, k], accumulated in float32, stored in output's dtype."""
    trace("moe_sum_reduce")
    if input.dim() != 3 or output.shape != (input.shape[0], input.shape[2]):
        raise ValueError(f"moe_sum_reduce: input {tuple(input.shape)} must be [tokens, topk, hidden] "
                         f"and output {tuple(output.shape)} [tokens, hidden]")
    output.copy_((input.float().sum(dim=1) * routed_scaling_factor).to(output.dtype))


# --- the private state of SGLang 0.5.23 this mode changes: the one list -------------------------


@dataclass(frozen=True)
class Patch:
    module: str
    attribute: str  # "name" or "Class.name"
    value: Callable[[Any], Any]  # given the module, returns the value to install
    why: str
    cuda_only_name: bool = False  # the module defines it only on CUDA: absent here, added


def _forward_cuda(self):
    return self.forward_cuda


def _uncompiled(attribute: str):
    def value(module):
        compiled = getattr(module, attribute)
        return getattr(compiled, "_torchdynamo_orig_callable", None) or compiled.__wrapped__
    return value


def _python_function(attribute: str):
    """The Python function behind one of SGLang's custom ops (register_custom_op keeps it as
    ``__wrapped__`` of the eager fast path it returns)."""
    def value(module):
        return getattr(module, attribute).__wrapped__
    return value


def _apply_token_bitmask_by_triton(logits: torch.Tensor, vocab_mask: torch.Tensor) -> None:
    """XGrammar's ``apply_vocab_mask`` taking SGLang's CUDA branch, its Triton kernel, whatever the
    logits' device (SGLang picks the branch by the logits' device)."""
    from sglang.kernels.ops.grammar.bitmask_ops import apply_token_bitmask_inplace_triton

    trace("apply_token_bitmask_inplace_triton")
    apply_token_bitmask_inplace_triton(logits, vocab_mask)


def _apply_token_bitmask_method(self, logits: torch.Tensor, vocab_mask: torch.Tensor) -> None:
    _apply_token_bitmask_by_triton(logits, vocab_mask)


def _faithful_dtype_guard(module):
    impl = module.fused_experts_impl

    def fused_experts_impl(hidden_states, *args, **kwargs):
        trace("fused_experts_impl")
        if hidden_states.dtype not in FAITHFUL_DTYPES:
            raise GpuBranchesRefused(
                f"the GPU-branch mode runs float32 and float16 only: {hidden_states.dtype} is not "
                "faithful in Triton's interpreter (tl.dot on bfloat16, triton issue 11584)")
        return impl(hidden_states, *args, **kwargs)

    return fused_experts_impl


_TOPK = "sglang.srt.layers.moe.topk"
_FUSED_MOE = "sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe"
_ALIGN = "sglang.srt.layers.moe.moe_runner.triton_utils.moe_align_block_size"
_XGRAMMAR = "sglang.srt.constrained.xgrammar_backend"
_SMALL_NUMEL = "sglang.kernels.ops.moe.moe_align_small_numel"
_MOE_FUSED_GATE = "sglang.kernels.ops.moe.moe_fused_gate"

PRIVATE_STATE: tuple[Patch, ...] = (
    Patch(_TOPK, "TopK._resolve_forward_method", lambda m: _forward_cuda,
          "TopK dispatches to forward_cuda"),
    Patch("sglang.srt.layers.quantization.unquant", "UnquantizedFusedMoEMethod._resolve_forward_method",
          lambda m: _forward_cuda, "the unquantized MoE method dispatches to forward_cuda (Triton runner)"),
    Patch(_TOPK, "_is_cuda", lambda m: True,
          "select_experts / biased_grouped_topk_gpu / _post_process_topk_ids take their CUDA branches"),
    Patch(_TOPK, "fused_topk_deepseek", lambda m: None,
          "FlashInfer's fused_topk_deepseek is a CUDA kernel: the Triton router (moe_fused_gate) runs, "
          "as on a GPU without FlashInfer", cuda_only_name=True),
    Patch(_TOPK, "_biased_grouped_topk_postprocess", _uncompiled("_biased_grouped_topk_postprocess"),
          "its torch.compile wrapper would compile for the CPU; the function itself runs"),
    Patch(_FUSED_MOE, "_is_cuda", lambda m: True, "fused_experts_impl takes its CUDA branches"),
    Patch(_FUSED_MOE, "silu_and_mul", lambda m: silu_and_mul, "a CUDA JIT kernel: torch stand-in",
          cuda_only_name=True),
    Patch(_FUSED_MOE, "moe_sum_reduce", lambda m: moe_sum_reduce,
          "sgl_kernel's CUDA kernel: torch stand-in", cuda_only_name=True),
    Patch(_FUSED_MOE, "is_arch_support_pdl", lambda m: lambda: True,
          "as on an H100 (sm90): up to 32 tokens the combine runs the Triton moe_sum_reduce"),
    Patch(_FUSED_MOE, "outplace_fused_experts", _python_function("outplace_fused_experts"),
          "a torch custom op registered for CUDA only: the Python function behind it runs"),
    Patch(_FUSED_MOE, "inplace_fused_experts", _python_function("inplace_fused_experts"),
          "the same (in-place variant)"),
    Patch(_FUSED_MOE, "fused_experts_impl", _faithful_dtype_guard,
          "refuses bfloat16 (not faithful in the interpreter) at the first MoE call"),
    Patch(_ALIGN, "_is_cuda", lambda m: True,
          "moe_align_block_size takes its CUDA branches (the Triton small-numel kernel beyond 63 experts)"),
    Patch(_ALIGN, "sgl_moe_align_block_size", lambda m: moe_align_block_size,
          "sgl_kernel's CUDA kernel: torch stand-in", cuda_only_name=True),
    Patch(_ALIGN, "SMALL_NUMEL_LIMIT", lambda m: importlib.import_module(_SMALL_NUMEL).SMALL_NUMEL_LIMIT,
          "imported only on CUDA", cuda_only_name=True),
    Patch(_ALIGN, "moe_align_small_numel",
          lambda m: importlib.import_module(_SMALL_NUMEL).moe_align_small_numel,
          "imported only on CUDA (a Triton kernel)", cuda_only_name=True),
    Patch("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config", "get_device_name",
          lambda m: lambda device_id=0: DEVICE_NAME, "the tuned-config lookup reads the GPU's name"),
    Patch(_MOE_FUSED_GATE, "moe_fused_gate", _traced("moe_fused_gate"),
          "traced (SGLang's Triton router; imported where it is called)"),
    Patch("sglang.kernels.ops.moe.fused_moe_triton_kernels", "moe_sum_reduce_triton",
          _traced("moe_sum_reduce_triton"), "traced (the combine's Triton kernel)"),
    Patch(_FUSED_MOE, "moe_sum_reduce_triton", _traced("moe_sum_reduce_triton"),
          "the same name, imported into fused_moe"),
    Patch("sglang.kernels.ops.attention.extend_attention", "extend_attention_fwd",
          _traced("extend_attention_fwd"), "traced (imported when the Triton backend is built)"),
    Patch("sglang.kernels.ops.attention.decode_attention", "decode_attention_fwd",
          _traced("decode_attention_fwd"), "traced (the same)"),
    Patch(_XGRAMMAR, "XGrammarGrammar.apply_vocab_mask", lambda m: _apply_token_bitmask_method,
          "the token bitmask is applied by SGLang's Triton kernel, as on CUDA"),
    Patch(_XGRAMMAR, "XGrammarGrammarBackend.apply_vocab_mask",
          lambda m: staticmethod(_apply_token_bitmask_by_triton), "the same, the backend's static method"),
)


def _owner_and_name(module, attribute: str):
    owner, _, name = attribute.rpartition(".")
    return (getattr(module, owner) if owner else module), name


def requested(environ=None) -> bool:
    return (os.environ if environ is None else environ).get(ENABLE_ENV) == "1"


def refusal(environ=None) -> str | None:
    """Why the mode cannot run in this process, or None."""
    environ = os.environ if environ is None else environ
    if torch.cuda.is_available():
        return ("megrez_sglang.model.gpu_branches: torch sees a GPU here, where the real kernels run; "
                "the GPU-branch mode is for machines without one")
    import sglang

    if sglang.__version__ != SGLANG_VERSION:
        return (f"megrez_sglang.model.gpu_branches: written for SGLang {SGLANG_VERSION} (it changes private "
                f"module state), found {sglang.__version__}")
    if environ.get(INTERPRET_ENV) != "1":
        return (f"megrez_sglang.model.gpu_branches: {INTERPRET_ENV}=1 must be set before Triton is imported "
                "(without a GPU the Triton kernels run only in its interpreter)")
    return None


def gpu_branch_environment(dtype: str | None = None) -> dict[str, str]:
    """The variables an SGLang engine started from this process needs for the mode (the engine's
    processes inherit os.environ); raises GpuBranchesRefused with the reason where it cannot run
    (`dtype`, the engine's, when given: float32 or float16 only)."""
    if dtype is not None and str(dtype).removeprefix("torch.") not in ("float32", "float16", "half", "float"):
        raise GpuBranchesRefused(
            f"megrez_sglang.model.gpu_branches: dtype {dtype} is not faithful in Triton's interpreter "
            "(tl.dot on bfloat16, triton issue 11584): use float32 or float16")
    reason = refusal({**os.environ, INTERPRET_ENV: "1"})
    if reason:
        raise GpuBranchesRefused(reason)
    return {INTERPRET_ENV: "1", ENABLE_ENV: "1"}


@contextmanager
def enabled(dtype: str | None = None):
    """SGLang engines started inside run the GPU branches (their processes inherit os.environ
    at start); the variables are restored afterwards. Raises GpuBranchesRefused where the mode
    cannot run (see gpu_branch_environment)."""
    saved = {name: os.environ.get(name) for name in (INTERPRET_ENV, ENABLE_ENV)}
    os.environ.update(gpu_branch_environment(dtype))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_installed = False


def install() -> None:
    """Switch this process's SGLang onto its CUDA branches (see PRIVATE_STATE). Idempotent."""
    global _installed
    if _installed:
        return
    reason = refusal()
    if reason:
        raise GpuBranchesRefused(reason)
    resolved = []
    for patch in PRIVATE_STATE:  # resolve every target first: nothing changes unless all exist
        module = importlib.import_module(patch.module)
        owner, name = _owner_and_name(module, patch.attribute)
        if hasattr(owner, name) == patch.cuda_only_name:
            state = "present" if patch.cuda_only_name else "missing"
            raise GpuBranchesRefused(f"megrez_sglang.model.gpu_branches: {patch.module}.{patch.attribute} is "
                                     f"{state} (not SGLang {SGLANG_VERSION}'s layout)")
        resolved.append((owner, name, patch.value(module)))
    kernel = importlib.import_module(_FUSED_MOE).invoke_fused_moe_kernel.__globals__.get("fused_moe_kernel")
    if kernel is not None and type(kernel).__name__ != "InterpretedFunction":
        raise GpuBranchesRefused("megrez_sglang.model.gpu_branches: SGLang's Triton kernels were compiled "
                                 f"for a GPU ({INTERPRET_ENV} was set after Triton was imported)")
    for owner, name, value in resolved:
        setattr(owner, name, value)
    _installed = True


def install_if_requested() -> None:
    """The plugin's hook (every SGLang process): install where MEGREZ_GPU_BRANCHES=1. A refusal
    stops the process with its one-line reason: an engine asked for the GPU branches must not
    quietly run the CPU ones."""
    if not requested():
        return
    try:
        install()
    except GpuBranchesRefused as e:
        raise SystemExit(str(e)) from None
