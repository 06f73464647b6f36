"""Build a Megrez2 checkpoint here, in exactly the real checkpoint's layout.

    python -m megrez_sglang.model.build_checkpoint OUT_DIR [--preset tiny|small|real-config]
                                             [--seed N] [--set field=value ...]

Writes config.json (the real field set, transformers-4 layout, but no auto_map: see
MegrezMoeConfig.legacy_dict), safetensors of the reference model's seeded random weights under
the real tensor names (bfloat16; the correction biases float32), generation_config.json (the
card's sampling), a tokenizer trained here (see megrez_sglang.model.tokenizer) and megrez_sglang.json,
which says the weights are random. ``real-config`` writes the config and tokenizer only, at the
real shapes. The same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from .config import MegrezMoeConfig
from .model_path import PROVENANCE_FILE
from .prompts import PROMPTS_DIR
from .tokenizer import PAD_TOKEN, STOP_TOKENS, save_tokenizer, train_tokenizer

# Regular-token budget of the trained tokenizer (the corpus yields ~3.3k); specials come after.
TOKENIZER_VOCAB = 4000

PRESETS: dict[str, dict] = {
    # A few MB, fast on CPU: 1 dense layer + 2 sharing groups of 3 MoE layers.
    "tiny": dict(
        hidden_size=64, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=192, moe_intermediate_size=32, n_routed_experts=8,
        num_experts_per_tok=2, n_shared_experts=2, max_position_embeddings=4096,
    ),
    # Tens of MB, for CPU benchmarks: 1 dense layer + 3 sharing groups.
    "small": dict(
        hidden_size=256, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=2,
        head_dim=32, intermediate_size=1024, moe_intermediate_size=128, n_routed_experts=16,
        num_experts_per_tok=4, n_shared_experts=2, max_position_embeddings=8192,
    ),
    # The real shapes (config defaults), no weights: shape checks and dummy-weight loading.
    "real-config": {},
}
# Spread of each layer's correction bias, relative to the sigmoid scores (0..1): large enough
# that the bias changes the selection and that the layers of a group route differently.
CORRECTION_BIAS_STD = 0.2
# A random model's next-token logits are nearly flat: its greedy choice flips under bfloat16
# rounding. The bigram prior makes it confident, like a trained model: lm_head gets a term that
# points from each token's embedding to a fixed random successor, with the embeddings scaled up so
# that they dominate the residual stream. Routing, experts and attention still shape every logit
# (and so every logprob); 0 gives a plainly random model whose greedy tokens depend on them.
DEFAULT_BIGRAM_PRIOR = 0.5
BIGRAM_EMBEDDING_SCALE = 2.0


def parse_overrides(items: list[str]) -> dict:
    """`field=value` pairs; values are JSON where they parse (numbers, true/false, null)."""
    overrides = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--set expects field=value, got {item!r}")
        if field not in MegrezMoeConfig.__dataclass_fields__:
            raise ValueError(f"--set {field}: MegrezMoeConfig has no field {field!r}")
        try:
            overrides[field] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[field] = raw
    return overrides


def make_config(preset: str, tokenizer, overrides: dict | None = None) -> MegrezMoeConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    fields = dict(PRESETS[preset])
    if preset != "real-config":
        fields["vocab_size"] = tokenizer.get_vocab_size()
    fields.update(
        architectures=["MegrezMoeForCausalLM"],
        eos_token_id=tokenizer.token_to_id(STOP_TOKENS[0]),
        pad_token_id=tokenizer.token_to_id(PAD_TOKEN),
        bos_token_id=None,
        torch_dtype="bfloat16",
    )
    fields.update(overrides or {})
    return MegrezMoeConfig(**fields)


def random_state_dict(
    config: MegrezMoeConfig, seed: int, bigram_prior: float = DEFAULT_BIGRAM_PRIOR
) -> dict[str, torch.Tensor]:
    """The reference model's seeded random weights, under the real checkpoint's names."""
    from .reference import MegrezMoeForCausalLM

    torch.manual_seed(seed)
    model = MegrezMoeForCausalLM(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            if not layer.is_moe:
                continue
            # Router logits of order 1, so that the choice depends on the token, not the bias alone.
            layer.mlp.gate.weight.normal_(0.0, config.hidden_size**-0.5, generator=generator)
            if layer.mlp.gate.e_score_correction_bias is not None:
                layer.mlp.gate.e_score_correction_bias.normal_(
                    0.0, CORRECTION_BIAS_STD, generator=generator
                )
        if bigram_prior:
            embed = model.model.embed_tokens.weight
            embed.mul_(BIGRAM_EMBEDDING_SCALE)
            successor = torch.randperm(config.vocab_size, generator=generator)
            unit_rows = embed / embed.norm(dim=1, keepdim=True)
            # lm_head row i points at the embedding of the token whose successor is i
            model.lm_head.weight.add_(bigram_prior * unit_rows[successor])
        if config.attention_bias:  # last: the other weights stay those of the unbiased build
            # Non-zero q/k/v/o biases (the reference initialises them to 0), at the weights' scale:
            # o_proj's bias goes straight into a residual stream of that size.
            for layer in model.model.layers:
                for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    getattr(layer.self_attn, proj).bias.normal_(0.0, config.initializer_range,
                                                                generator=generator)
    return {
        name: t.detach().to(torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16)
        .contiguous()
        for name, t in model.state_dict().items()
    }


def save_weights(state_dict: dict[str, torch.Tensor], out_dir: Path, max_shard_size: str) -> None:
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(
        state_dict, out_dir, max_shard_size=max_shard_size, metadata={"format": "pt"},
        safe_serialization=True,
    )


def write_generation_config(out_dir: Path, tokenizer, config: MegrezMoeConfig) -> None:
    """generation_config.json: the card's sampling, stopping at either stop token."""
    generation_config = {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "eos_token_id": [tokenizer.token_to_id(t) for t in STOP_TOKENS],
        "pad_token_id": config.pad_token_id,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")


def read_weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, from all its safetensors shards, by name."""
    from safetensors import safe_open

    tensors = {}
    for file in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def build_checkpoint(
    out_dir: str | Path,
    preset: str = "tiny",
    seed: int = 0,
    overrides: dict | None = None,
    max_shard_size: str = "5GB",
    bigram_prior: float = DEFAULT_BIGRAM_PRIOR,
) -> Path:
    tokenizer = train_tokenizer(TOKENIZER_VOCAB)
    config = make_config(preset, tokenizer, overrides)  # validates before anything is written
    state_dict = random_state_dict(config, seed, bigram_prior) if preset != "real-config" else None
    provenance = {"weights": "random" if preset != "real-config" else "none", "preset": preset,
                  "seed": seed, "bigram_prior": bigram_prior, "overrides": overrides or {}}
    return write_checkpoint(out_dir, config, tokenizer, state_dict, provenance, max_shard_size)


def write_checkpoint(out_dir: str | Path, config, tokenizer, state_dict: dict | None, provenance: dict,
                     max_shard_size: str = "5GB") -> Path:
    """A checkpoint folder in the real layout, replacing `out_dir`: config.json,
    generation_config.json, the tokenizer's files, the weights (none: a config-only checkpoint)
    and the provenance (megrez_sglang.json). The builder's and the trainer's output alike."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text(json.dumps(config.legacy_dict(), indent=2) + "\n")
    write_generation_config(out_dir, tokenizer, config)
    save_tokenizer(tokenizer, out_dir, model_max_length=config.max_position_embeddings)
    if state_dict is not None:
        save_weights(state_dict, out_dir, max_shard_size)
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def cache_dir() -> Path:
    return Path(os.environ.get("MEGREZ_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "megrez-sglang")


def cached_checkpoint(preset: str = "tiny", seed: int = 0) -> Path:
    """A checkpoint built once and reused: under the user cache, keyed by the builder's sources
    (so a change to the builder, tokenizer, corpus or prompts builds a fresh one)."""
    package = Path(__file__).parent
    sources = [package / f for f in ("build_checkpoint.py", "config.py", "reference.py", "prompts.py")]
    sources += sorted(p for p in (package / "tokenizer").rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts)
    sources += [PROMPTS_DIR / "system_default.txt"]
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + path.read_bytes())
    target = cache_dir() / "checkpoints" / f"{preset}-seed{seed}-{digest.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same one
        if not (target / "config.json").exists():
            staging = build_checkpoint(target.parent / f".{target.name}.{os.getpid()}", preset, seed)
            os.replace(staging, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megrez_sglang.model.build_checkpoint",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="split the safetensors into shards of this size (with an index)")
    parser.add_argument("--bigram-prior", type=float, default=DEFAULT_BIGRAM_PRIOR,
                        help="confidence of the random model's next-token choice (0: none)")
    args = parser.parse_args(argv)
    try:
        out = build_checkpoint(args.out_dir, args.preset, args.seed,
                               parse_overrides(args.overrides), args.max_shard_size,
                               args.bigram_prior)
    except ValueError as e:
        print(f"build_checkpoint: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
