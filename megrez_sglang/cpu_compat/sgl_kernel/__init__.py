"""CPU-only compatibility stand-in for SGLang's CUDA-only ``sgl_kernel`` package.

Why it exists: PyPI's ``sglang-kernel`` wheel is CUDA-only (``import sgl_kernel`` fails with
``libcuda.so.1`` missing) and there is no CPU build. With ``SGLANG_USE_CPU_ENGINE=1``, SGLang 0.5.23
imports a few ``*_cpu`` helpers from ``sgl_kernel`` at module import time even though, without
the AMX kernels (``torch.ops.sgl_kernel`` stays empty), every layer then takes its
``forward_native`` path and never calls them.

What it does: :mod:`megrez_sglang.serving.cpu_runtime` puts this directory first on ``sys.path`` and
``PYTHONPATH`` on hosts without CUDA only. Here

* a name ending in ``_cpu`` resolves to a placeholder that RAISES when called (and appends the
  call to the file named by ``MEGREZ_SGL_KERNEL_TRACE`` when that is set, so a test can prove
  that nothing called it even where SGLang would swallow the exception; the import itself is
  recorded there too, so the test can also prove that the process it watches was traced);
* every other name raises ``AttributeError``/``ImportError``, so SGLang's own ``except
  ImportError`` fallbacks apply exactly as on a machine without the package.

It is a development and test path, not a fast path. Never used on a CUDA host.

Imported first thing by every SGLang process on such a host, it also silences two log lines
that only say there is no GPU: SGLang's JIT-kernel probe ("Cannot detect CUDA architecture.")
and torch's "No CUDA runtime is found" when torch.compile looks for a CUDA toolkit.
"""

import logging
import os


def _drop(logger_name: str, message_start: str) -> None:
    logging.getLogger(logger_name).addFilter(lambda record: not record.getMessage().startswith(message_start))


_drop("sglang.kernels.jit.utils.arch", "Cannot detect CUDA architecture")
_drop("torch.utils.cpp_extension", "No CUDA runtime is found")

IS_MEGREZ_CPU_STANDIN = True
TRACE_ENV = "MEGREZ_SGL_KERNEL_TRACE"


class StandinKernelCalled(RuntimeError):
    """A CUDA/AMX kernel was called on the CPU path: the stand-in has no implementation."""


def _trace(event: str) -> None:
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {event}\n")


IMPORTED = "(imported)"
_trace(IMPORTED)


def _placeholder(name: str):
    def placeholder(*args, **kwargs):
        _trace(name)
        raise StandinKernelCalled(
            f"sgl_kernel.{name} was called, but sgl_kernel here is megrez_sglang's CPU-only "
            "stand-in (megrez_sglang/cpu_compat): it has no kernels. A layer took an AMX/CUDA "
            "path instead of its forward_native path."
        )

    placeholder.__name__ = placeholder.__qualname__ = name
    placeholder.is_megrez_placeholder = True
    return placeholder


def __getattr__(name: str):
    if name.endswith("_cpu"):
        return _placeholder(name)
    raise AttributeError(
        f"sgl_kernel has no attribute {name!r}: this is megrez_sglang's CPU-only stand-in "
        "(no CUDA kernels)"
    )
