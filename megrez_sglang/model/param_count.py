"""Stored and activated parameters of a Megrez2 config, counted on the reference model's tree.

    python -m megrez_sglang.model.param_count [MODEL_DIR]      (default: the real model's config)

Stored counts each sharing group's experts once, as the checkpoint stores them. Activated per token
leaves out the embedding (a lookup) and counts num_experts_per_tok experts in every MoE layer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .config import MegrezMoeConfig


@dataclass
class ParameterCounts:
    stored: int
    activated: int
    embedding: int
    experts_stored: int

    def table(self) -> str:
        rows = [("stored", self.stored), ("activated per token", self.activated),
                ("  of which embedding (not activated)", self.embedding),
                ("  of which routed experts, stored", self.experts_stored)]
        return "\n".join(f"{name:<40}{n / 1e9:>8.3f} B  ({n:,})" for name, n in rows)


def count_parameters(config: MegrezMoeConfig) -> ParameterCounts:
    from .reference import MegrezMoeForCausalLM

    with torch.device("meta"):
        model = MegrezMoeForCausalLM(config)
    stored = sum(p.numel() for p in model.parameters())  # parameters() yields shared ones once
    embedding = model.model.embed_tokens.weight.numel()
    experts_stored = sum(
        p.numel() for name, p in model.named_parameters() if ".mlp.experts." in name
    )
    one_expert = 3 * config.hidden_size * config.moe_intermediate_size
    moe_layers = sum(config.is_moe_layer(l) for l in range(config.num_hidden_layers))
    activated = stored - embedding - experts_stored + moe_layers * config.num_experts_per_tok * one_expert
    return ParameterCounts(stored, activated, embedding, experts_stored)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        from transformers import AutoConfig

        from .auto_classes import register_with_transformers

        register_with_transformers()
        config = AutoConfig.from_pretrained(argv[0])
        source = argv[0]
    else:
        config, source = MegrezMoeConfig(), "the real Megrez2-3x7B-A3B config"
    print(f"{source}: {config.num_hidden_layers} layers, {config.num_expert_groups} expert pools, "
          f"{config.num_key_value_heads} KV heads")
    print(count_parameters(config).table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
