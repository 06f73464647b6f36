"""Megrez2 in plain PyTorch: the reference every faster implementation is checked against.

Written from the Megrez2 tech report (arXiv 2507.17728, sections 3.1-3.4) and the architecture
note, in the order of the equations:

    x_0 = embed(ids)
    a_l = x_l + Attn_l(RMSNorm_in_l(x_l))                       GQA, neox RoPE, no bias
    u_l = RMSNorm_post_l(a_l)                                   post-attention-norm output
    dense layers:  y_l = MLP_l(u_l)                             SwiGLU
    MoE layers:    g   = u_{l-1} if pre_gate else u_l           pre-gated routing (3.4)
                   s   = score(W_gate_l g)                      sigmoid (or softmax), float32
                   idx = topk(s + b_l, k)                       b_l: this layer's correction bias,
                                                                selection only; grouped first
                   w   = s[idx] (/ sum, if norm_topk_prob)
                   y_l = rsf * sum_k w_k E_{owner(l),idx_k}(u_l) + Shared_l(u_l)
    x_{l+1} = a_l + y_l
    logits = lm_head(RMSNorm_final(x_L))

Cross-layer expert sharing (3.3): the experts E_{owner(l)} are stored once, under the group's
owner layer; the other layers of the group receive them as an argument. The module tree, and so
the state dict, uses exactly the real checkpoint's tensor names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import MegrezMoeConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Neox-style RoPE (HF Llama's rotate_half layout). x: [B, heads, T, D]; positions: [B, T].
    Angles in float32, the rotation in the model dtype (as HF Llama does)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    angles = positions[:, None, :, None].float() * inv_freq  # [B, 1, T, D/2]
    cos = torch.cat((angles, angles), dim=-1).cos().to(x.dtype)
    sin = torch.cat((angles, angles), dim=-1).sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query attention: num_key_value_heads K/V heads shared by the query heads."""

    def __init__(self, config: MegrezMoeConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.rope_theta = config.head_dim, config.rope_parameters["rope_theta"]
        self.dropout = config.attention_dropout  # training only (train_tiny), as in HF models
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=bias)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor, cache: Cache | None) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_id)  # [B, kv_heads, S, D], S = past + T
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(  # [B, heads, T, D]
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The dense layers, each expert, the shared experts."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def select_experts(
    router_logits: Tensor, correction_bias: Tensor | None, config: MegrezMoeConfig
) -> tuple[Tensor, Tensor]:
    """Top-k routing of one layer (tech report 3.2; DeepSeek-V3's bias-corrected selection).

    router_logits: [T, E] float32. Returns (weights [T, k] float32, expert ids [T, k]).
    The correction bias only decides WHICH experts are chosen; the weights are the unbiased
    scores. With n_group > 1, only experts of the topk_group best groups can be chosen; a group
    scores the sum of its two best biased scores (noaux_tc) or its best score
    (group_limited_greedy). routed_scaling_factor is NOT applied here (see MoE.forward).
    """
    scores = router_logits.sigmoid() if config.scoring_func == "sigmoid" else router_logits.softmax(-1)
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if config.n_group > 1:
        T, E = choice.shape
        grouped = choice.view(T, config.n_group, E // config.n_group)
        if config.topk_method == "noaux_tc":
            group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [T, n_group]
        else:
            group_scores = grouped.max(dim=-1).values
        best_groups = group_scores.topk(config.topk_group, dim=-1).indices
        group_kept = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
        expert_kept = group_kept.repeat_interleave(E // config.n_group, dim=1)
        choice = choice.masked_fill(~expert_kept, float("-inf"))
    expert_ids = choice.topk(config.num_experts_per_tok, dim=-1).indices
    weights = scores.gather(1, expert_ids)
    if config.norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights, expert_ids


class Router(nn.Module):
    """`mlp.gate`: the layer's own router weight [E, H] and correction bias [E], kept in float32."""

    def __init__(self, config: MegrezMoeConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        if config.topk_method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(
                torch.zeros(config.n_routed_experts, dtype=torch.float32)
            )
        else:
            self.e_score_correction_bias = None

    def forward(self, router_input: Tensor) -> tuple[Tensor, Tensor]:
        logits = F.linear(router_input.float(), self.weight.float())  # routing in float32
        return select_experts(logits, self.e_score_correction_bias, self.config)


class MoE(nn.Module):
    """A MoE layer's `mlp`: router, shared experts, and (owner layers only) the routed experts."""

    def __init__(self, config: MegrezMoeConfig, is_owner: bool):
        super().__init__()
        self.routed_scaling_factor = config.routed_scaling_factor
        self.gate = Router(config)
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts
            else None
        )
        self.experts = (
            nn.ModuleList(
                MLP(config.hidden_size, config.moe_intermediate_size)
                for _ in range(config.n_routed_experts)
            )
            if is_owner
            else None
        )

    def forward(self, u: Tensor, router_input: Tensor, experts: nn.ModuleList) -> Tensor:
        shape = u.shape
        u, router_input = u.reshape(-1, shape[-1]), router_input.reshape(-1, shape[-1])
        weights, expert_ids = self.gate(router_input)  # [N, k]
        routed = torch.zeros_like(u, dtype=torch.float32)
        for e in expert_ids.unique().tolist():
            token, slot = (expert_ids == e).nonzero(as_tuple=True)
            routed.index_add_(0, token, weights[token, slot, None] * experts[e](u[token]).float())
        y = (routed * self.routed_scaling_factor).to(u.dtype)  # the scaling factor, exactly once
        if self.shared_experts is not None:
            y = y + self.shared_experts(u)
        return y.view(shape)


class DecoderLayer(nn.Module):
    def __init__(self, config: MegrezMoeConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.is_moe = config.is_moe_layer(layer_id)
        self.pre_gate = config.pre_gate
        self.self_attn = Attention(config, layer_id)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if self.is_moe:
            self.mlp = MoE(config, is_owner=config.is_owner_layer(layer_id))
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        mask: Tensor,
        cache: Cache | None,
        pre_gate_hidden: Tensor | None,
        experts: nn.ModuleList | None,
    ) -> tuple[Tensor, Tensor]:
        """Returns (x_{l+1}, u_l); u_l is the next layer's router input when pre_gate is on."""
        a = x + self.self_attn(self.input_layernorm(x), positions, mask, cache)
        u = self.post_attention_layernorm(a)
        if self.is_moe:
            # The first MoE layer of a model whose layer 0 is MoE has no previous layer: own u.
            use_previous = self.pre_gate and pre_gate_hidden is not None
            y = self.mlp(u, pre_gate_hidden if use_previous else u, experts)
        else:
            y = self.mlp(u)
        return a + y, u


class MegrezMoePreTrainedModel(PreTrainedModel):
    config_class = MegrezMoeConfig
    config: MegrezMoeConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True

    def __init__(self, config: MegrezMoeConfig, *args, **kwargs):
        # Again here: from_pretrained(path, field=value) sets fields after the config's own check.
        config.check_supported()
        super().__init__(config, *args, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Router):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.e_score_correction_bias is not None:
                init.zeros_(module.e_score_correction_bias)


class MegrezMoeModel(MegrezMoePreTrainedModel):
    def __init__(self, config: MegrezMoeConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, l) for l in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def experts_of(self, layer_id: int) -> nn.ModuleList | None:
        """The routed experts layer `layer_id` uses: those stored under its group's owner."""
        if not self.config.is_moe_layer(layer_id):
            return None
        return self.layers[self.config.owner_layer(layer_id)].mlp.experts

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Cache | None]:
        B, T = input_ids.shape
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=input_ids.device)
        if position_ids is None:  # left padding: positions count real tokens only
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        # [B, 1, T, past+T]: causal, and never attend to padding
        causal = torch.ones(T, past + T, dtype=torch.bool, device=input_ids.device).tril(past)
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        # a fully padded query row would give NaN: let it see itself (its output is never used)
        mask = mask | ~mask.any(-1, keepdim=True)

        x = self.embed_tokens(input_ids)
        pre_gate_hidden = None
        for layer_id, layer in enumerate(self.layers):
            x, pre_gate_hidden = layer(
                x, position_ids, mask, past_key_values, pre_gate_hidden, self.experts_of(layer_id)
            )
        return self.norm(x), past_key_values


class MegrezMoeForCausalLM(MegrezMoePreTrainedModel, GenerationMixin):
    def __init__(self, config: MegrezMoeConfig):
        super().__init__(config)
        self.model = MegrezMoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        hidden, cache = self.model(
            input_ids, attention_mask, position_ids, past_key_values, bool(use_cache)
        )
        logits = self.lm_head(hidden[:, -logits_to_keep:, :])
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)


def checkpoint_layout(config: MegrezMoeConfig) -> dict[str, torch.Size]:
    """Every tensor of a Megrez2 checkpoint with this config: name -> shape (unsharded)."""
    with torch.device("meta"):
        model = MegrezMoeForCausalLM(config)
    return {name: t.shape for name, t in model.state_dict().items()}
