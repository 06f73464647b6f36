"""Megrez2 (MegrezMoeForCausalLM) for SGLang 0.5.23, built from SGLang's own layers.

The module tree mirrors the checkpoint (see docs/architecture.md), so load_weights is a short
mapping. What is particular to Megrez2 (tech report, sections 3.3-3.4):

* Cross-layer expert sharing: one FusedMoE per sharing group, built and registered only at the
  group's owner layer (``layers[owner].mlp.experts``, the name SGLang's expert mapping, post-load
  processing and CUDA-graph code look for). The other layers of the group hold a plain, non-module
  reference to it, so its weights exist, load and count once. Every layer keeps its own router
  weight, correction bias (float32, used for selection only), TopK and shared-experts MLP.
* Pre-gated routing: each layer hands its post-attention-norm output (its FFN input) to the next
  layer as an explicit tensor; the next layer's router reads it, its experts act on their own
  input. The FusedMoE never writes in place, so that tensor stays intact.
* routed_scaling_factor is applied exactly once, here, on every device: neither TopK nor FusedMoE
  is given it (SGLang applies it in some kernels and ignores it in others).

Attention is RadixAttention, so any attention backend serves the model (FlashInfer on CUDA,
torch_native on CPU) with radix-cache prefix sharing; residuals, norms and the tensor/data-parallel
layout moves are SGLang's stage boundaries (``append_stages``), as in its Llama and Qwen2-MoE.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from sglang.srt.layers.activation import SiluAndMul
from sglang.srt.layers.layer_boundary import append_stages, declare_attn, declare_ffn
from sglang.srt.layers.layer_boundary.residual import batch as residual_batch
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from sglang.srt.layers.logits_processor import LogitsProcessor
from sglang.srt.layers.moe.ep_moe.layer import get_moe_impl_class
from sglang.srt.layers.moe.fused_moe_triton import FusedMoE
from sglang.srt.layers.moe.topk import TopK
from sglang.srt.layers.quantization.base_config import QuantizationConfig
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.rotary_embedding import get_rope
from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.runtime_context import get_exec, get_flags, get_parallel
from sglang.srt.utils import add_prefix, make_layers
from sglang.srt.utils.hf_transformers.common import get_rope_config
from torch import nn

from ..model.config import MegrezMoeConfig
from ..model.reference import checkpoint_layout

logger = logging.getLogger(__name__)


class MegrezMoeMLP(nn.Module):
    """SwiGLU MLP: the dense layers and each MoE layer's shared experts. Output left unreduced
    over tensor parallelism: the layer's FFN boundary completes the sum."""

    def __init__(self, hidden_size: int, intermediate_size: int,
                 quant_config: QuantizationConfig | None, prefix: str):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size] * 2, bias=False, quant_config=quant_config,
            prefix=add_prefix("gate_up_proj", prefix),
        )
        self.down_proj = RowParallelLinear(
            intermediate_size, hidden_size, bias=False, quant_config=quant_config,
            reduce_results=False, prefix=add_prefix("down_proj", prefix),
        )
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        out, _ = self.down_proj(self.act_fn(gate_up))
        return out


class MegrezMoeGate(nn.Module):
    """`mlp.gate`: this layer's router weight [E, H] and correction bias [E].

    Replicated on every rank, both float32: routing is computed in float32 (a bfloat16 bias
    picked a different expert set for 0.1-0.8 % of tokens), and a weight stored in float32 at
    load (the checkpoint's bfloat16 values, exactly) saves casting it on every forward: one
    kernel per MoE layer per decode step, 30 of them per token at the real shapes."""

    def __init__(self, config: MegrezMoeConfig):
        super().__init__()
        self.weight = nn.Parameter(
            torch.empty(config.n_routed_experts, config.hidden_size, dtype=torch.float32)
        )
        if config.topk_method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(
                torch.empty(config.n_routed_experts, dtype=torch.float32)
            )
        else:
            self.e_score_correction_bias = None

    def forward(self, router_input: torch.Tensor) -> torch.Tensor:
        return F.linear(router_input.float(), self.weight)  # routing in float32


class MegrezMoeSparseBlock(nn.Module):
    """A MoE layer's `mlp`: router, shared experts, and the group's routed experts."""

    def __init__(
        self,
        config: MegrezMoeConfig,
        layer_id: int,
        group_experts: FusedMoE | None,
        quant_config: QuantizationConfig | None,
        prefix: str,
    ):
        super().__init__()
        self.layer_id = layer_id
        self.routed_scaling_factor = config.routed_scaling_factor
        if get_parallel().tp_size > config.n_routed_experts:
            raise ValueError(f"tensor parallel size {get_parallel().tp_size} is larger than "
                             f"the number of experts ({config.n_routed_experts})")
        self.gate = MegrezMoeGate(config)
        grouped = config.topk_method != "greedy"
        self.topk = TopK(
            top_k=config.num_experts_per_tok,
            layer_id=layer_id,
            use_grouped_topk=grouped,
            num_expert_group=config.n_group if grouped else None,
            topk_group=config.topk_group if grouped else None,
            renormalize=config.norm_topk_prob,
            scoring_func=config.scoring_func,
            correction_bias=self.gate.e_score_correction_bias,
            quant_config=quant_config,
        )
        if group_experts is None:  # the owner layer builds (and registers) the group's experts
            self.experts = get_moe_impl_class(quant_config)(
                num_experts=config.n_routed_experts,
                top_k=config.num_experts_per_tok,
                hidden_size=config.hidden_size,
                intermediate_size=config.moe_intermediate_size,
                layer_id=layer_id,
                quant_config=quant_config,
                reduce_results=False,
                inplace=False,  # the input is also the shared experts' and the next router's
                prefix=add_prefix("experts", prefix),
            )
            if self.experts.should_fuse_routed_scaling_factor_in_topk:
                raise NotImplementedError(
                    f"MoE runner backend {self.experts.runner_backend} folds the routed scaling "
                    "factor into routing; Megrez applies it once in the model. Use the default "
                    "(triton) MoE runner backend."
                )
        else:  # a plain attribute, not a submodule: the weights stay registered once
            object.__setattr__(self, "experts", group_experts)
        self.topk.bind_runner_backend(self.experts.runner_backend)
        # The shared experts' width comes from the checkpoint's expert width: SGLang pads
        # moe_intermediate_size for CPU tensor parallelism, which this MLP's loader does not know.
        expert_width = getattr(config, "original_moe_intermediate_size", None) or config.moe_intermediate_size
        self.shared_experts = (
            MegrezMoeMLP(config.hidden_size, expert_width * config.n_shared_experts,
                         quant_config, add_prefix("shared_experts", prefix))
            if config.n_shared_experts else None
        )

    def forward(self, hidden_states: torch.Tensor, router_input: torch.Tensor) -> torch.Tensor:
        if router_input.shape != hidden_states.shape:
            raise RuntimeError(
                f"layer {self.layer_id}: the pre-gate tensor {tuple(router_input.shape)} does not "
                f"match this layer's FFN input {tuple(hidden_states.shape)}; the previous layer's "
                "FFN ran on a different token layout"
            )
        topk_output = self.topk(hidden_states, self.gate(router_input))
        routed = self.experts(hidden_states, topk_output)
        if self.routed_scaling_factor != 1.0:
            routed = routed * self.routed_scaling_factor  # exactly once (tech report 3.2)
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(hidden_states)
        return routed


class MegrezMoeAttention(nn.Module):
    def __init__(self, config: MegrezMoeConfig, layer_id: int,
                 quant_config: QuantizationConfig | None, prefix: str):
        super().__init__()
        attn_tp_size = get_parallel().attn_tp_size
        self.total_num_heads = config.num_attention_heads
        self.total_num_kv_heads = config.num_key_value_heads
        if self.total_num_heads % attn_tp_size:
            raise ValueError(f"{self.total_num_heads} attention heads do not split over "
                             f"attention TP size {attn_tp_size}")
        if self.total_num_kv_heads >= attn_tp_size:
            if self.total_num_kv_heads % attn_tp_size:
                raise ValueError(f"{self.total_num_kv_heads} KV heads do not split over "
                                 f"attention TP size {attn_tp_size}")
        elif attn_tp_size % self.total_num_kv_heads:
            raise ValueError(f"{self.total_num_kv_heads} KV heads cannot be replicated over "
                             f"attention TP size {attn_tp_size}")
        self.num_heads = self.total_num_heads // attn_tp_size
        self.num_kv_heads = max(1, self.total_num_kv_heads // attn_tp_size)
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        rope_theta, rope_scaling = get_rope_config(config)

        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, self.total_num_heads, self.total_num_kv_heads,
            bias=config.attention_bias, quant_config=quant_config, parallel_group="attn_tp",
            prefix=add_prefix("qkv_proj", prefix),
        )
        self.o_proj = RowParallelLinear(
            self.total_num_heads * self.head_dim, config.hidden_size, bias=config.attention_bias,
            quant_config=quant_config, parallel_group="attn_tp", reduce_results=False,
            prefix=add_prefix("o_proj", prefix),
        )
        self.rotary_emb = get_rope(
            self.head_dim, rotary_dim=self.head_dim, max_position=config.max_position_embeddings,
            base=rope_theta, rope_scaling=rope_scaling, is_neox_style=True,
        )
        self.attn = RadixAttention(
            self.num_heads, self.head_dim, self.head_dim**-0.5, num_kv_heads=self.num_kv_heads,
            layer_id=layer_id, quant_config=quant_config, prefix=add_prefix("attn", prefix),
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                forward_batch: ForwardBatch) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(self.attn(q, k, v, forward_batch))
        return out


class MegrezMoeDecoderLayer(nn.Module):
    def __init__(
        self,
        config: MegrezMoeConfig,
        layer_id: int,
        group_experts: FusedMoE | None,
        quant_config: QuantizationConfig | None,
        prefix: str,
    ):
        super().__init__()
        self.layer_id = layer_id
        self.is_moe = config.is_moe_layer(layer_id)
        self.pre_gate = config.pre_gate
        self.self_attn = MegrezMoeAttention(config, layer_id, quant_config,
                                            add_prefix("self_attn", prefix))
        if self.is_moe:
            self.mlp = MegrezMoeSparseBlock(config, layer_id, group_experts, quant_config,
                                            add_prefix("mlp", prefix))
        else:
            self.mlp = MegrezMoeMLP(config.hidden_size, config.intermediate_size, quant_config,
                                    add_prefix("mlp", prefix))
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        attn, ffn = self.stage_facts(config, layer_id)
        self.attn_boundary, self.ffn_boundary = append_stages(
            (attn, self.input_layernorm),
            (ffn, self.post_attention_layernorm),
        )

    @staticmethod
    def stage_facts(config: MegrezMoeConfig, layer_id: int):
        """The stages a layer declares, from the config alone (see sglang's make_layers)."""
        return (
            declare_attn(),
            declare_ffn(sparse=config.is_moe_layer(layer_id),
                        next_layer_sparse=config.is_moe_layer(layer_id + 1)),
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        forward_batch: ForwardBatch,
        pre_gate_hidden: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (the layer's output, its post-attention-norm output u_l for the next router)."""
        hidden_states = self.attn_boundary.prepare(hidden_states, forward_batch)
        if hidden_states.shape[0] != 0:
            hidden_states = self.self_attn(positions, hidden_states, forward_batch)
        hidden_states = self.attn_boundary.finish(hidden_states, forward_batch)
        ffn_input = self.ffn_boundary.prepare(hidden_states, forward_batch)  # u_l
        if self.is_moe:
            # Pre-gated routing (3.4): the router reads u_{l-1}; a model whose layer 0 is a MoE
            # layer has no previous layer there, so that layer routes on its own input.
            use_previous = self.pre_gate and pre_gate_hidden is not None
            out = self.mlp(ffn_input, pre_gate_hidden if use_previous else ffn_input)
        else:
            out = self.mlp(ffn_input)
        return self.ffn_boundary.finish(out, forward_batch), ffn_input


class MegrezMoeModel(nn.Module):
    def __init__(self, config: MegrezMoeConfig, quant_config: QuantizationConfig | None,
                 prefix: str = ""):
        super().__init__()
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, quant_config=quant_config,
            prefix=add_prefix("embed_tokens", prefix),
        )
        group_experts: dict[int, FusedMoE] = {}  # owner layer -> its FusedMoE, while building

        def build_layer(idx: int, prefix: str) -> MegrezMoeDecoderLayer:
            owner = config.owner_layer(idx) if config.is_moe_layer(idx) else None
            layer = MegrezMoeDecoderLayer(
                config, idx, group_experts.get(owner) if owner != idx else None,
                quant_config, prefix,
            )
            if owner == idx:
                group_experts[idx] = layer.mlp.experts
            return layer

        self.layers = make_layers(
            config.num_hidden_layers, build_layer, prefix=add_prefix("layers", prefix),
            stage_facts=lambda idx: MegrezMoeDecoderLayer.stage_facts(config, idx),
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                forward_batch: ForwardBatch, input_embeds: torch.Tensor | None = None):
        hidden_states = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
        residual_batch.start(forward_batch)
        pre_gate_hidden = None
        for layer in self.layers:
            hidden_states, pre_gate_hidden = layer(
                positions, hidden_states, forward_batch, pre_gate_hidden
            )
        return residual_batch.final_norm(hidden_states, forward_batch, self.norm, skip_empty=True)


class MegrezMoeForCausalLM(nn.Module):
    fall_back_to_pt_during_load = False

    def __init__(self, config: MegrezMoeConfig, quant_config: QuantizationConfig | None = None,
                 prefix: str = ""):
        super().__init__()
        # The config as the checkpoint wrote it, checked again: --json-model-override-args sets
        # fields after the config's own check (MegrezMoeConfig.check_supported).
        checkpoint_config(config)
        _check_parallel_setup(config)
        self.config = config
        self.quant_config = quant_config
        self.model = MegrezMoeModel(config, quant_config, prefix=add_prefix("model", prefix))
        self.lm_head = ParallelLMHead(
            config.vocab_size, config.hidden_size, quant_config=quant_config,
            prefix=add_prefix("lm_head", prefix),
            use_attn_tp_group=get_parallel().enable_dp_lm_head,
        )
        self.logits_processor = LogitsProcessor(config)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                forward_batch: ForwardBatch, input_embeds: torch.Tensor | None = None):
        hidden_states = self.model(input_ids, positions, forward_batch, input_embeds)
        return self.logits_processor(input_ids, hidden_states, self.lm_head, forward_batch)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_megrez_weights(self, weights)


def _check_parallel_setup(config: MegrezMoeConfig) -> None:
    """Configurations whose assumptions expert sharing or pre-gating break: fail loudly."""
    problem = unsupported_setup(get_parallel().pp_size, get_exec().moe, get_flags().moe.tbo_enabled,
                                config.experts_shared_frequency)
    if problem:
        raise NotImplementedError(problem)


# One expert pool serves a whole sharing group, but SGLang's expert-placement machinery (EPLB,
# redundant experts, the expert-location dispatch and the distribution recorder feeding it)
# keeps one placement per layer and would move or count a group's experts per layer.
_PER_LAYER_EXPERT_PLACEMENT = (
    "one expert pool serves each group of {f} consecutive MoE layers, while SGLang's expert "
    "placement is per layer"
)


def unsupported_setup(pp_size: int, moe, tbo_enabled: bool, experts_shared_frequency: int = 3) -> str | None:
    """Why this server configuration cannot run Megrez2, or None. `moe` is SGLang's resolved
    MoE settings (``get_exec().moe``: the --enable-eplb, --init-expert-location,
    --ep-dispatch-algorithm, --expert-distribution-recorder-mode and --ep-num-redundant-experts
    server arguments)."""
    if pp_size > 1:
        return ("Megrez2 does not support pipeline parallelism: the pre-gate tensor and the shared "
                "expert pools would have to cross pipeline stages")
    if tbo_enabled:
        return ("Megrez2 does not support two-batch overlap: the pre-gate tensor is handed from one "
                "layer to the next over the whole batch")
    why = _PER_LAYER_EXPERT_PLACEMENT.format(f=experts_shared_frequency)
    if moe.enable_eplb:
        return f"Megrez2 does not support --enable-eplb (expert load balancing): {why}"
    if moe.ep_num_redundant_experts:
        return (f"Megrez2 does not support redundant experts (--ep-num-redundant-experts "
                f"{moe.ep_num_redundant_experts}): {why}")
    if moe.init_expert_location not in (None, "trivial"):
        return (f"Megrez2 does not support --init-expert-location {moe.init_expert_location!r} "
                f"(only 'trivial'): {why}")
    if moe.ep_dispatch_algorithm is not None:
        return (f"Megrez2 does not support --ep-dispatch-algorithm {moe.ep_dispatch_algorithm!r}: "
                f"{why}")
    if moe.expert_distribution_recorder_mode is not None:
        return (f"Megrez2 does not support --expert-distribution-recorder-mode "
                f"{moe.expert_distribution_recorder_mode!r} (nor --expert-balancedness-report-mode, "
                f"which turns it on): {why}")
    return None


# (model parameter, checkpoint shard name, shard id) for the stacked projections
STACKED_PARAMS = [
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
]


# SGLang's CPU path pads these fields in place for tensor parallelism and keeps the checkpoint's
# value under "original_<field>" (sglang/srt/configs/update_config.py).
_PADDED_BY_SGLANG = {
    "moe_intermediate_size": "original_moe_intermediate_size",
    "intermediate_size": "original_intermediate_size",
    "num_attention_heads": "original_num_attention_heads",
    "num_key_value_heads": "original_total_num_kv_heads",
}


def checkpoint_config(config: MegrezMoeConfig) -> MegrezMoeConfig:
    """The config as the checkpoint was written, before SGLang padded any field."""
    fields = config.to_dict()
    for field, original in _PADDED_BY_SGLANG.items():
        if getattr(config, original, None) is not None:
            fields[field] = getattr(config, original)
    return MegrezMoeConfig(**{k: v for k, v in fields.items() if not k.startswith("original_")})


class CheckpointMismatch(ValueError):
    """The checkpoint's tensors do not match the Megrez2 model built from its config."""


_LAYER_NUMBER = re.compile(r"model\.layers\.(\d+)\.")


def unused_checkpoint_tensor(name: str, num_hidden_layers: int) -> str | None:
    """Why the loader skips this checkpoint tensor, or None when it must load it. Exactly what
    every public loader of the real checkpoint skips (the publisher's SGLang and vLLM demos,
    chatllm.cpp, the llama.cpp pull request): RoPE's ``inv_freq`` buffers, which the model
    recomputes, and layers numbered at or above num_hidden_layers (extra next-token-prediction
    layers that generation does not run)."""
    if name.endswith(".rotary_emb.inv_freq"):
        return "rotary_emb.inv_freq buffers"
    match = _LAYER_NUMBER.match(name)
    if match and int(match.group(1)) >= num_hidden_layers:
        return f"tensors of layers >= num_hidden_layers ({num_hidden_layers})"
    return None


def load_megrez_weights(model: MegrezMoeForCausalLM,
                        weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Load the real checkpoint names into the model; every parameter is written exactly once.

    Routed experts exist only under owner layers (``model.layers.{owner}.mlp.experts.{e}.*``) and
    go through SGLang's expert mapping into that layer's FusedMoE; everything else is a direct or
    stacked (q/k/v -> qkv, gate/up -> gate_up) copy. A tensor the model does not have, a shape
    that does not fit, or a parameter left unwritten raises CheckpointMismatch naming it; only
    the tensors `unused_checkpoint_tensor` names are skipped (counted in one log line).
    """
    config = model.config
    layout = checkpoint_layout(checkpoint_config(config))
    expert_mapping = FusedMoE.make_expert_params_mapping(
        ckpt_gate_proj_name="gate_proj", ckpt_down_proj_name="down_proj",
        ckpt_up_proj_name="up_proj", num_experts=config.n_routed_experts,
    )
    params = dict(model.named_parameters())
    # A stacked or expert parameter is filled by several checkpoint tensors: count the pieces.
    expected_pieces = {}
    for name, param in params.items():
        if name.endswith(("qkv_proj.weight", "qkv_proj.bias")):  # the bias with attention_bias
            expected_pieces[name] = 3
        elif name.endswith("gate_up_proj.weight"):
            expected_pieces[name] = 2
        elif name.endswith("experts.w13_weight"):  # gate and up of each expert on this rank
            expected_pieces[name] = 2 * param.shape[0]
        elif name.endswith("experts.w2_weight"):
            expected_pieces[name] = param.shape[0]
        else:
            expected_pieces[name] = 1
    written: dict[str, int] = {name: 0 for name in params}

    def write(param_name: str, checkpoint_name: str, tensor: torch.Tensor, *loader_args, **kw):
        if param_name not in params:
            raise CheckpointMismatch(
                f"checkpoint tensor {checkpoint_name!r} {tuple(tensor.shape)} has no place in "
                f"MegrezMoeForCausalLM (no parameter {param_name!r}); is it a Megrez2 "
                "checkpoint whose config.json matches its weights?"
            )
        param = params[param_name]
        loader = getattr(param, "weight_loader", default_weight_loader)
        expert_id = kw.get("expert_id")
        if expert_id is not None:
            experts = model.model.layers[int(param_name.split(".")[2])].mlp.experts
            if experts._map_global_expert_id_to_local_expert_id(expert_id) == -1:
                return  # expert parallelism: this expert lives on another rank
        try:
            loader(param, tensor, *loader_args, **kw)
        except (AssertionError, RuntimeError, ValueError) as e:
            raise CheckpointMismatch(
                f"checkpoint tensor {checkpoint_name!r} of shape {tuple(tensor.shape)} does not "
                f"fit parameter {param_name!r} of shape {tuple(param.shape)}: {e}"
            ) from e
        written[param_name] += 1

    skipped: Counter[str] = Counter()
    for name, tensor in weights:
        reason = unused_checkpoint_tensor(name, config.num_hidden_layers)
        if reason is not None:
            skipped[reason] += 1
            continue
        if name not in layout:
            if ".mlp.experts." in name and config.is_moe_layer(int(name.split(".")[2])):
                layer_id = int(name.split(".")[2])
                raise CheckpointMismatch(
                    f"checkpoint tensor {name!r}: layer {layer_id} is not the owner of its "
                    f"expert-sharing group, so it stores no experts (owner: layer "
                    f"{config.owner_layer(layer_id)})"
                )
            raise CheckpointMismatch(
                f"checkpoint tensor {name!r} {tuple(tensor.shape)} has no place in "
                "MegrezMoeForCausalLM; is it a Megrez2 checkpoint whose config.json matches "
                "its weights?"
            )
        if tensor.shape != layout[name]:
            raise CheckpointMismatch(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, but this config "
                f"expects {tuple(layout[name])}"
            )
        if ".mlp.experts." in name:  # routed experts (never `mlp.shared_experts.`)
            for param_suffix, weight_part, expert_id, shard_id in expert_mapping:
                if weight_part in name:
                    write(name.replace(weight_part, param_suffix), name, tensor, name,
                          shard_id=shard_id, expert_id=expert_id)
                    break
            else:
                raise CheckpointMismatch(f"checkpoint tensor {name!r}: not an expert projection")
            continue
        for param_part, ckpt_part, shard_id in STACKED_PARAMS:
            if f".{ckpt_part}." in name:
                write(name.replace(ckpt_part, param_part), name, tensor, shard_id)
                break
        else:
            write(name, name, tensor)

    if skipped:
        logger.info("Megrez2 checkpoint: skipped %d tensor(s) the model does not use: %s",
                    sum(skipped.values()), ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    wrong = {n: (written[n], expected_pieces[n]) for n in params if written[n] != expected_pieces[n]}
    if wrong:
        details = ", ".join(f"{n} (written {w} of {e} pieces)" for n, (w, e) in sorted(wrong.items())[:8])
        raise CheckpointMismatch(
            f"{len(wrong)} parameter(s) not loaded exactly once from the checkpoint: {details}"
        )
    return set(params)


EntryClass = MegrezMoeForCausalLM
