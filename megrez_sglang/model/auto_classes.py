"""Megrez2 in transformers' Auto classes: ``MegrezMoeConfig`` for ``model_type "megrez_moe"`` (so
``AutoConfig`` ignores the real config.json's ``auto_map`` and needs no remote code) and the
plain-PyTorch reference for ``AutoModel`` / ``AutoModelForCausalLM``."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .config import MegrezMoeConfig


def register_with_transformers() -> None:
    from .reference import MegrezMoeForCausalLM, MegrezMoeModel

    AutoConfig.register(MegrezMoeConfig.model_type, MegrezMoeConfig, exist_ok=True)
    AutoModel.register(MegrezMoeConfig, MegrezMoeModel, exist_ok=True)
    AutoModelForCausalLM.register(MegrezMoeConfig, MegrezMoeForCausalLM, exist_ok=True)
