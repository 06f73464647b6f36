"""Make Megrez2 checkpoints load by name, with no remote code and no user-side patching.

* transformers: ``MegrezMoeConfig`` for ``model_type "megrez_moe"`` (so ``AutoConfig`` ignores the
  real config.json's ``auto_map``) and the plain-PyTorch reference for ``AutoModelForCausalLM``.
* SGLang: ``register`` is this package's entry point in SGLang's plugin group
  ``sglang.srt.plugins`` (pyproject.toml). SGLang calls it first thing in the engine, the
  server's main process and every scheduler/detokenizer process, which is where configs are
  parsed and models built.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .config import MegrezMoeConfig


def register_with_transformers() -> None:
    from .reference import MegrezMoeForCausalLM, MegrezMoeModel

    AutoConfig.register(MegrezMoeConfig.model_type, MegrezMoeConfig, exist_ok=True)
    AutoModel.register(MegrezMoeConfig, MegrezMoeModel, exist_ok=True)
    AutoModelForCausalLM.register(MegrezMoeConfig, MegrezMoeForCausalLM, exist_ok=True)


def register() -> None:
    """The SGLang plugin entry point."""
    register_with_transformers()
