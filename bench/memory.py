"""Memory: parameter bytes with cross-layer expert sharing vs without (computed for the real
config, measured on the loaded `small` model), and KV-cache bytes per token.

    python -m bench.memory [--model PATH]

"Without sharing" is the same architecture with every MoE layer holding its own experts (what
an engine that ignores experts_shared_frequency would allocate). The measurement builds SGLang's
MegrezMoeForCausalLM in this process (a world of one), loads the checkpoint and counts unique
parameter bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import megrez_sglang  # noqa: F401  (configures SGLang for this host)
from megrez_sglang.model.build_checkpoint import cached_checkpoint, read_weights
from megrez_sglang.model.config import MegrezMoeConfig
from megrez_sglang.model.param_count import count_parameters

from .report import print_table, write_json

BF16 = 2


def computed(config: MegrezMoeConfig) -> dict:
    counts = count_parameters(config)
    moe_layers = sum(config.is_moe_layer(l) for l in range(config.num_hidden_layers))
    per_pool = counts.experts_stored // config.num_expert_groups
    unshared = counts.stored + (moe_layers - config.num_expert_groups) * per_pool
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * BF16
    return {"params_shared": counts.stored, "params_unshared": unshared,
            "bytes_shared_bf16": counts.stored * BF16, "bytes_unshared_bf16": unshared * BF16,
            "kv_cache_bytes_per_token_bf16": kv}


def measured(model_path: str) -> dict:
    from sglang.test.layer_ut_utils import init_single_process_dist

    from megrez_sglang.sglang_models.megrez_moe import MegrezMoeForCausalLM

    init_single_process_dist(master_port=29741)
    config = MegrezMoeConfig.from_pretrained(model_path)
    torch.set_default_dtype(torch.bfloat16)
    model = MegrezMoeForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    tensors = read_weights(model_path)
    model.load_weights(tensors.items())
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())  # shared params once
    on_disk = sum(t.numel() * t.element_size() for t in tensors.values())
    pool = model.model.layers[config.first_k_dense_replace].mlp.experts
    pool_bytes = sum(p.numel() * p.element_size() for p in pool.parameters())
    moe_layers = sum(config.is_moe_layer(l) for l in range(config.num_hidden_layers))
    return {"loaded_bytes": loaded, "checkpoint_bytes": on_disk,
            "loaded_bytes_if_unshared": loaded + (moe_layers - config.num_expert_groups) * pool_bytes,
            "expert_pools": config.num_expert_groups, "moe_layers": moe_layers}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model")
    p.add_argument("--out")
    args = p.parse_args()
    model = args.model or str(cached_checkpoint("small"))
    real = computed(MegrezMoeConfig())
    small = measured(model)
    small_config = computed(MegrezMoeConfig.from_pretrained(model))
    gib = 1 << 30
    print_table("Parameters: cross-layer expert sharing vs every MoE layer with its own experts",
                ["model", "source", "shared", "unshared", "unshared / shared"], [
                    ["real config", "computed, bf16", f"{real['bytes_shared_bf16'] / gib:.2f} GiB "
                     f"({real['params_shared'] / 1e9:.2f} B)", f"{real['bytes_unshared_bf16'] / gib:.2f} GiB "
                     f"({real['params_unshared'] / 1e9:.2f} B)",
                     real["params_unshared"] / real["params_shared"]],
                    [Path(model).name, "measured, loaded bf16", f"{small['loaded_bytes'] / 2**20:.1f} MiB",
                     f"{small['loaded_bytes_if_unshared'] / 2**20:.1f} MiB",
                     small["loaded_bytes_if_unshared"] / small["loaded_bytes"]],
                ])
    print(f"\n{Path(model).name}: loaded {small['loaded_bytes']:,} bytes, "
          f"checkpoint {small['checkpoint_bytes']:,} "
          "bytes (the difference: vocabulary rows padded to a multiple of 64)")
    print_table("KV cache per token (K and V, every layer, bf16)", ["model", "bytes/token", "KiB/token",
                                                                    "GiB per 32K-token context"], [
        ["real config", real["kv_cache_bytes_per_token_bf16"], real["kv_cache_bytes_per_token_bf16"] / 1024,
         real["kv_cache_bytes_per_token_bf16"] * 32768 / gib],
        [Path(model).name, small_config["kv_cache_bytes_per_token_bf16"],
         small_config["kv_cache_bytes_per_token_bf16"] / 1024,
         small_config["kv_cache_bytes_per_token_bf16"] * 32768 / gib]])
    write_json("memory", {"model": model, "real_config": real, "small_measured": small,
                          "small_computed": small_config}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
