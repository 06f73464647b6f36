"""Run SGLang on hosts without CUDA: configure its CPU engine before SGLang is imported.

SGLang 0.5.23 needs two things on such a host (see the stand-in's docstring for the details):
``SGLANG_USE_CPU_ENGINE=1`` and an importable ``sgl_kernel``. Both go into ``os.environ`` (and
``sys.path``) so that the scheduler and detokenizer processes SGLang spawns see them too. On a
CUDA host nothing is changed.

``python -m megrez_sglang.serving.cpu_env`` prints the same settings as shell ``export`` lines, for
starting SGLang's own entry points (``python -m sglang.launch_server``) by hand.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parents[1] / "cpu_compat"

# "cpu" or "cuda" forces a choice; anything else means: CUDA if torch sees a device.
DEVICE_ENV = "MEGREZ_DEVICE"

# SGLang imports every module under sglang.srt.models at start-up and logs each one that cannot
# import here ("Ignore import error when loading ...", ~13 per process on a CPU host). With an
# external model package it loads only that package and defers its own models until asked for one.
MODEL_PACKAGE = "megrez_sglang.sglang_models"

# UserWarnings every SGLang process prints on the CPU path, about features that only exist on
# GPUs (PYTHONWARNINGS: action:message-prefix:category, comma-separated).
CPU_PATH_WARNINGS = (
    "ignore:Only CUDA:UserWarning",  # AWQ and GGUF quantization
    "ignore:Triton is not supported on current platform:UserWarning",
)


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
    warning_filters = [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
    warning_filters += [w for w in CPU_PATH_WARNINGS if w not in warning_filters]
    return {
        "SGLANG_USE_CPU_ENGINE": "1",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "PYTHONWARNINGS": ",".join(warning_filters),
        # The nvidia wheels ship libnccl.so.2; found, SGLang enables NCCL for tensor parallelism
        # on CPU and crashes ("Expected a cuda device"). Pointing it nowhere leaves gloo.
        "SGLANG_NCCL_SO_PATH": os.environ.get("SGLANG_NCCL_SO_PATH", "/nonexistent/libnccl.so.2"),
    }


def configure_sglang_for_host() -> str:
    """Configure SGLang for this host before it is imported; returns "cuda" or "cpu". Idempotent."""
    os.environ.setdefault("SGLANG_EXTERNAL_MODEL_PACKAGE", MODEL_PACKAGE)
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
    for spec in CPU_PATH_WARNINGS:  # this process read PYTHONWARNINGS before it was set
        action, message, category = spec.split(":")
        warnings.filterwarnings(action, message=re.escape(message), category=UserWarning)
    if str(STANDIN_DIR) not in sys.path:
        sys.path.insert(0, str(STANDIN_DIR))
    return device
