"""Starting SGLang for Megrez2 on this host: the engine (in-process) and the server's arguments.

One place decides the device-dependent settings, so that the offline script, the server script,
the tests and the benchmarks run SGLang the same way: FlashInfer attention on CUDA; on a CPU
host SGLang's CPU engine (see cpu_runtime) with torch-native attention, a bounded KV cache and an
idle scheduler that sleeps instead of spinning. And for every device: a Megrez2 checkpoint whose
config allows more positions than the model was trained on is served with the trained context.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cpu_runtime import configure_sglang_for_host

# On CPU the default mem_fraction_static sizes the KV cache from RAM (~15 GB) and slows start-up
# to ~40 s; a bounded cache is plenty for a development machine.
CPU_MAX_TOTAL_TOKENS = 16384


# SGLang logs the custom_sigquit_handler it is given at error level, on every start.
logging.getLogger("sglang.srt.entrypoints.engine").addFilter(
    lambda record: not record.getMessage().startswith("Using custom SIGQUIT handler"))

# Megrez2's config says max_position_embeddings 163840, but the model was trained on 32K tokens
# (docs/architecture.md): serving the config's figure would size SGLang's pools and accept prompts
# for positions the model never saw.
TRAINED_CONTEXT_LENGTH = 32768


def default_context_length(model_path: str) -> int | None:
    """TRAINED_CONTEXT_LENGTH for a local Megrez2 checkpoint whose config.json allows more
    positions; None otherwise (SGLang then takes the config's max_position_embeddings)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # not a local checkpoint (SGLang reports that), or not ours to judge
    is_megrez = (config.get("model_type") == "megrez_moe"
                 or "MegrezMoeForCausalLM" in (config.get("architectures") or []))
    positions = config.get("max_position_embeddings")
    if is_megrez and isinstance(positions, int) and positions > TRAINED_CONTEXT_LENGTH:
        return TRAINED_CONTEXT_LENGTH
    return None


class EngineStartError(RuntimeError):
    """SGLang's engine failed to start (its scheduler process died); see the log above."""


def raise_engine_start_error(*_args) -> None:
    """SGLang's custom_sigquit_handler: without one, a failed start SIGKILLs the calling process.
    A module-level function because SGLang pickles it into its subprocesses."""
    raise EngineStartError("SGLang's scheduler failed to start: see the log above")


CPU_THREADS_BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"


def cpu_threads_binding(ranks: int, cpus: Sequence[int] | None = None) -> str:
    """SGLANG_CPU_OMP_THREADS_BIND for `ranks` SGLang ranks on `cpus` (default: the CPUs this
    process may run on): entry i (``|``-separated) is the CPU set of the rank whose device id is
    i. The CPUs are split into contiguous groups as evenly as possible; with more ranks than
    CPUs, ranks share them round-robin. Unless this is set, SGLang asserts on a CPU host that the
    dp x tp ranks do not outnumber the NUMA nodes (a development machine has one)."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cpus = sorted(cpus)
    if not cpus:
        raise ValueError("no CPUs to bind the ranks to")
    if ranks >= len(cpus):
        groups = [[cpus[r % len(cpus)]] for r in range(ranks)]
    else:
        size, extra = divmod(len(cpus), ranks)
        starts = [r * size + min(r, extra) for r in range(ranks + 1)]
        groups = [cpus[starts[r]:starts[r + 1]] for r in range(ranks)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 and g[-1] - g[0] == len(g) - 1
                    else ",".join(map(str, g)) for g in groups)


def engine_args(model_path: str, *, device: str | None = None, tp_size: int = 1, dp_size: int = 1,
                nnodes: int = 1, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``sglang.Engine`` / ``ServerArgs`` for this host: `tp_size` x
    `dp_size` ranks over `nnodes` machines (data-parallel replicas inside one server: SGLang
    balances requests over them). An override wins, ``context_length=None`` included (the
    checkpoint's full max_position_embeddings)."""
    device = device or configure_sglang_for_host()
    args: dict[str, Any] = dict(model_path=model_path, tp_size=tp_size)
    if dp_size > 1:
        args["dp_size"] = dp_size
    if nnodes > 1:
        args["nnodes"] = nnodes
    context_length = default_context_length(model_path)
    if context_length is not None:
        args["context_length"] = context_length
    if device == "cuda":
        args.update(attention_backend="flashinfer")
    else:
        args.update(
            device="cpu",
            attention_backend="torch_native",
            max_total_tokens=CPU_MAX_TOTAL_TOKENS,
            sleep_on_idle=True,
        )
        if tp_size * dp_size > 1:
            # SGLang counts every rank of the job against the NUMA nodes; each machine binds
            # the ranks it runs (device ids 0..local-1). A binding set by the caller wins (the
            # cluster launcher sets one for the ranks of all its workers).
            local_ranks = max(1, tp_size * dp_size // nnodes)
            os.environ.setdefault(CPU_THREADS_BIND_ENV, cpu_threads_binding(local_ranks))
    args.update(overrides)
    return args


def start_engine(model_path: str, **kwargs: Any):
    """An ``sglang.Engine`` for `model_path` on this host (kwargs override engine_args)."""
    device = configure_sglang_for_host()
    import sglang

    kwargs.setdefault("custom_sigquit_handler", raise_engine_start_error)
    return sglang.Engine(**engine_args(model_path, device=kwargs.pop("device", device), **kwargs))
