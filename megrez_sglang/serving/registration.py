"""Make Megrez2 checkpoints load by name, with no remote code and no user-side patching.

* transformers: ``MegrezMoeConfig`` for ``model_type "megrez_moe"`` (so ``AutoConfig`` ignores the
  real config.json's ``auto_map``) and the plain-PyTorch reference for ``AutoModelForCausalLM``.
* SGLang: ``register`` is this package's entry point in SGLang's plugin group
  ``sglang.srt.plugins`` (pyproject.toml). SGLang calls it first thing in the engine, the
  server's main process and every scheduler/detokenizer process: where configs are parsed and
  models built. It registers the config and ``MegrezMoeForCausalLM`` with SGLang's registry,
  and, in a server started by this project's launchers, installs serving.hardening; with
  MEGREZ_GPU_BRANCHES=1 (gpu_branches), SGLang's CUDA branches under Triton's interpreter.

A broken model module must never let SGLang fall back silently to its generic transformers
backend (SGLang only logs plugin and model-import errors): if the import fails, the registry
gets a stand-in whose construction raises the original error.
"""

from __future__ import annotations

import traceback

from ..model.auto_classes import register_with_transformers

ARCHITECTURE = "MegrezMoeForCausalLM"


class ModelModuleImportError(RuntimeError):
    pass


def _unloadable_model_class(error: BaseException) -> type:
    message = (
        f"megrez_sglang.sglang_models.megrez_moe failed to import, so {ARCHITECTURE} cannot be "
        f"built:\n{''.join(traceback.format_exception(error))}"
    )

    def __init__(self, *args, **kwargs):
        raise ModelModuleImportError(message)

    return type(ARCHITECTURE, (), {"__init__": __init__, "import_error": message})


def register_with_sglang() -> None:
    from sglang.srt.models.registry import ModelRegistry

    try:
        from ..sglang_models.megrez_moe import MegrezMoeForCausalLM
    except Exception as e:  # noqa: BLE001 - re-raised when SGLang builds the model
        MegrezMoeForCausalLM = _unloadable_model_class(e)
    ModelRegistry.models[ARCHITECTURE] = MegrezMoeForCausalLM


def register() -> None:
    """The SGLang plugin entry point."""
    register_with_transformers()
    register_with_sglang()
    from ..model import gpu_branches
    from . import hardening

    gpu_branches.install_if_requested()  # MEGREZ_GPU_BRANCHES=1: SGLang's CUDA branches, interpreted

    if hardening.requested():
        try:
            hardening.install()
        except Exception as e:
            # SGLang only logs a failing plugin; a server asked to be hardened must not start open.
            # (SystemExit is not an Exception, so SGLang's plugin loader lets it through.)
            raise SystemExit(f"megrez_sglang: could not harden SGLang's HTTP server, not starting: "
                             f"{type(e).__name__}: {e}") from e
