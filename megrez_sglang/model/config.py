"""MegrezMoeConfig: the configuration of Megrez2-3x7B-A3B (``model_type = "megrez_moe"``).

Every field of the real checkpoint's ``config.json``, with the real model's values as defaults
(facts and their sources: docs/architecture.md; Megrez2 tech report, sections 3.1-3.4).
Invalid combinations, and values that the reference or the SGLang model class does not implement,
fail at construction with a one-line ``ValueError`` naming the field, the value and what is
supported: this check is the one place where both models (and SGLang's config loading, which goes
through ``AutoConfig``) refuse a config. Both model classes run it again when they are built, for
fields set after construction (``from_pretrained(path, field=value)``, SGLang's
``--json-model-override-args``).

Some defaults are guesses (GUESSED_FIELDS: no public source states them); a checkpoint's
config.json always wins, and loading one that lacks a guessed field logs a warning naming it.
"""

from __future__ import annotations

import logging

import transformers
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

logger = logging.getLogger(__name__)

# Fields of the real config.json that no public source states (docs/architecture.md, "Still
# guesses"): the defaults below are the likeliest values, used by the real-config preset and by a
# config.json that lacks them (with a warning). Every other default is confirmed by the
# publisher's demos, chatllm.cpp's converter or the llama.cpp pull request.
GUESSED_FIELDS = ("num_key_value_heads", "rope_theta", "rms_norm_eps", "intermediate_size",
                  "eos_token_id", "pad_token_id", "bos_token_id")

SCORING_FUNCS = ("sigmoid", "softmax")
# noaux_tc: DeepSeek-V3's bias-corrected selection (sigmoid scores, group score = sum of the top-2
# biased scores); group_limited_greedy: DeepSeek-V2's (group score = max score); greedy: plain top-k.
TOPK_METHODS = ("noaux_tc", "group_limited_greedy", "greedy")


class MegrezMoeConfig(PreTrainedConfig):
    model_type = "megrez_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 128880
    hidden_size: int = 2048
    intermediate_size: int = 10944  # the dense layers' SwiGLU width
    moe_intermediate_size: int = 1408  # one routed expert's width
    num_hidden_layers: int = 31
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int | None = 128
    # Routed experts (tech report 3.2): top-k of n_routed_experts, one shared MLP of width
    # n_shared_experts x moe_intermediate_size, routed output scaled once by routed_scaling_factor.
    n_routed_experts: int = 64
    num_experts_per_tok: int = 6
    n_shared_experts: int = 4
    routed_scaling_factor: float = 1.0
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    # Cross-layer expert sharing (3.3): each run of experts_shared_frequency consecutive MoE layers
    # uses the expert pool stored under its first layer (the group's owner).
    experts_shared_frequency: int = 3
    # Pre-gated routing (3.4): layer l's router reads layer l-1's post-attention-norm output.
    pre_gate: bool = True
    hidden_act: str = "silu"
    max_position_embeddings: int = 163840
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = 120002
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 120005
    tie_word_embeddings: bool = False
    rope_theta: float = 1_000_000.0
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """From a config.json's contents (what from_pretrained and AutoConfig call)."""
        present = set(config_dict) | set(kwargs)
        if "rope_theta" in (config_dict.get("rope_parameters") or {}):
            present.add("rope_theta")
        missing = [f for f in GUESSED_FIELDS if f not in present]
        if missing:
            logger.warning("Megrez2 config.json has no %s: using the guessed default(s) %s",
                           ", ".join(missing),
                           ", ".join(f"{f}={cls.__dataclass_fields__[f].default!r}" for f in missing))
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)  # folds rope_theta / rope_scaling into rope_parameters
        self.check_supported()

    def check_supported(self) -> None:
        """Raise a one-line ValueError naming the first field whose value is invalid or not
        implemented by the models (reference.py, sglang_models/megrez_moe.py)."""
        def fail(field: str, why: str):
            raise ValueError(f"MegrezMoeConfig.{field}: {why}")

        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "intermediate_size",
                      "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok",
                      "n_group", "topk_group", "experts_shared_frequency"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, f"must be an integer >= 1, got {value!r}")
        if self.n_shared_experts < 0:
            fail("n_shared_experts", f"must be >= 0, got {self.n_shared_experts}")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_key_value_heads", f"num_attention_heads ({self.num_attention_heads}) must "
                 f"be divisible by num_key_value_heads ({self.num_key_value_heads})")
        if self.num_experts_per_tok > self.n_routed_experts:
            fail("num_experts_per_tok", f"top-k ({self.num_experts_per_tok}) is larger than "
                 f"the number of routed experts ({self.n_routed_experts})")
        if self.scoring_func not in SCORING_FUNCS:
            fail("scoring_func", f"unknown {self.scoring_func!r}; expected one of {SCORING_FUNCS}")
        if self.topk_method not in TOPK_METHODS:
            fail("topk_method", f"unknown {self.topk_method!r}; expected one of {TOPK_METHODS}")
        if self.topk_method == "noaux_tc" and self.scoring_func != "sigmoid":
            fail("scoring_func", "topk_method 'noaux_tc' is defined on sigmoid scores "
                 f"(DeepSeek-V3); got {self.scoring_func!r}")
        if self.n_routed_experts % self.n_group:
            fail("n_group", f"n_routed_experts ({self.n_routed_experts}) must be divisible by "
                 f"n_group ({self.n_group})")
        if self.topk_group > self.n_group:
            fail("topk_group", f"topk_group ({self.topk_group}) is larger than n_group "
                 f"({self.n_group})")
        if self.n_group > 1:
            if self.topk_method == "greedy":
                fail("n_group", "grouped selection (n_group > 1) needs topk_method "
                     "'noaux_tc' or 'group_limited_greedy', not 'greedy'")
            experts_in_chosen_groups = self.topk_group * (self.n_routed_experts // self.n_group)
            if experts_in_chosen_groups < self.num_experts_per_tok:
                fail("topk_group", f"the {self.topk_group} chosen group(s) hold only "
                     f"{experts_in_chosen_groups} experts, fewer than num_experts_per_tok "
                     f"({self.num_experts_per_tok})")
            if self.topk_method == "noaux_tc" and self.n_routed_experts // self.n_group < 2:
                fail("n_group", "noaux_tc scores a group by its top-2 experts: each group "
                     "needs at least 2 experts")
        if self.moe_layer_freq != 1:
            fail("moe_layer_freq", "only 1 is supported: expert-sharing groups are runs of "
                 f"consecutive MoE layers; got {self.moe_layer_freq}")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            fail("first_k_dense_replace", f"must be in [0, num_hidden_layers="
                 f"{self.num_hidden_layers}], got {self.first_k_dense_replace}")
        if self.hidden_act != "silu":
            fail("hidden_act", f"only 'silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        if self.routed_scaling_factor <= 0:
            fail("routed_scaling_factor", f"must be > 0, got {self.routed_scaling_factor}")
        rope = self.rope_parameters or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            fail("rope_scaling", f"only plain RoPE is supported (the real model has "
                 f"rope_scaling null), got rope_type {rope_type!r}")
        # transformers folds a top-level partial_rotary_factor into rope_parameters; both models
        # rotate the whole head.
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            fail("partial_rotary_factor", "only 1.0 is supported (RoPE on the whole head_dim), "
                 f"got {rope['partial_rotary_factor']}")
        if self.tie_word_embeddings:
            fail("tie_word_embeddings", "only false is supported (the real checkpoint stores "
                 "lm_head.weight; neither model ties it to embed_tokens), got true")
        if not 0.0 <= self.attention_dropout < 1.0:
            fail("attention_dropout", f"must be in [0, 1), got {self.attention_dropout}")

    # --- the layer structure, derived from the fields above -------------------------------------

    def is_moe_layer(self, layer_id: int) -> bool:
        return layer_id >= self.first_k_dense_replace

    def owner_layer(self, layer_id: int) -> int:
        """The MoE layer whose checkpoint entries hold the experts that `layer_id` uses."""
        if not self.is_moe_layer(layer_id):
            raise ValueError(f"layer {layer_id} is dense: it has no experts")
        k, f = self.first_k_dense_replace, self.experts_shared_frequency
        return (layer_id - k) // f * f + k

    def is_owner_layer(self, layer_id: int) -> bool:
        return self.is_moe_layer(layer_id) and self.owner_layer(layer_id) == layer_id

    @property
    def num_expert_groups(self) -> int:
        """How many expert pools are stored: one per sharing group."""
        return sum(self.is_owner_layer(layer) for layer in range(self.num_hidden_layers))

    def legacy_dict(self) -> dict:
        """The ``config.json`` layout of the real checkpoint (transformers 4.x era): every Megrez
        field, ``rope_theta`` and ``rope_scaling`` instead of transformers 5's ``rope_parameters``,
        and ``torch_dtype``. It loads back to an equal config.

        Unlike the real checkpoint, no ``auto_map``: it names configuration_megrez_moe.py and
        modeling_megrez_moe.py, which the project's checkpoints do not contain, and transformers
        then asks whether to run that remote code (``[y/N]``) in any process that has not imported
        this package (AutoTokenizer loads the config first). This package registers
        MegrezMoeConfig with transformers on import, so the config needs no remote code."""
        d = {field: getattr(self, field) for field in MegrezMoeConfig.__annotations__}
        del d["rope_parameters"]
        d["rope_scaling"] = None
        d.update(
            architectures=self.architectures or ["MegrezMoeForCausalLM"],
            model_type=self.model_type,
            torch_dtype=str(self.dtype).removeprefix("torch.") if self.dtype else "bfloat16",
            transformers_version=self.transformers_version or transformers.__version__,
        )
        return dict(sorted(d.items()))
