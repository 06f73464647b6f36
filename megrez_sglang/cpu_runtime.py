"""Run SGLang on hosts without CUDA: configure its CPU engine before SGLang is imported.

SGLang 0.5.23 needs two things on such a host (see the stand-in's docstring for the details):
``SGLANG_USE_CPU_ENGINE=1`` and an importable ``sgl_kernel``. Both go into ``os.environ`` (and
``sys.path``) so that the scheduler and detokenizer processes SGLang spawns see them too. On a
CUDA host nothing is changed.

``python -m megrez_sglang.cpu_runtime`` prints the same settings as shell ``export`` lines, for
starting SGLang's own entry points (``python -m sglang.launch_server``) by hand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent / "cpu_compat"

# "cpu" or "cuda" forces a choice; anything else means: CUDA if torch sees a device.
DEVICE_ENV = "MEGREZ_DEVICE"


def detect_device() -> str:
    forced = os.environ.get(DEVICE_ENV, "").strip().lower()
    if forced in ("cpu", "cuda"):
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_engine_environment() -> dict[str, str]:
    """The environment SGLang's CPU path needs (empty on a CUDA host)."""
    if detect_device() == "cuda":
        return {}
    pythonpath = [str(STANDIN_DIR)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(STANDIN_DIR)
    ]
    return {
        "SGLANG_USE_CPU_ENGINE": "1",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        # The nvidia wheels ship libnccl.so.2; found, SGLang enables NCCL for tensor parallelism
        # on CPU and crashes ("Expected a cuda device"). Pointing it nowhere leaves gloo.
        "SGLANG_NCCL_SO_PATH": os.environ.get("SGLANG_NCCL_SO_PATH", "/nonexistent/libnccl.so.2"),
    }


def configure_sglang_for_host() -> str:
    """Configure SGLang for this host before it is imported; returns "cuda" or "cpu". Idempotent."""
    device = detect_device()
    if device == "cuda":
        return device
    real_kernel = sys.modules.get("sgl_kernel")
    if real_kernel is not None and not getattr(real_kernel, "IS_MEGREZ_CPU_STANDIN", False):
        raise RuntimeError(
            "the CUDA sgl_kernel package was imported before megrez_sglang configured SGLang's "
            "CPU engine: import megrez_sglang before sglang"
        )
    os.environ.update(cpu_engine_environment())
    if str(STANDIN_DIR) not in sys.path:
        sys.path.insert(0, str(STANDIN_DIR))
    return device


if __name__ == "__main__":
    import shlex

    for key, value in cpu_engine_environment().items():
        print(f"export {key}={shlex.quote(value)}")
