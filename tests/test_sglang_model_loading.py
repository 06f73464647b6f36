"""MegrezMoeForCausalLM built in-process (a world of one, gloo): structure, weights, memory."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megrez_sglang.config import MegrezMoeConfig


@pytest.fixture(scope="module")
def sglang_world():
    from sglang.test.layer_ut_utils import init_single_process_dist

    init_single_process_dist(master_port=29713)


def build(path: str, dtype=torch.bfloat16):
    from megrez_sglang.sglang_models.megrez_moe import MegrezMoeForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return MegrezMoeForCausalLM(MegrezMoeConfig.from_pretrained(path))
    finally:
        torch.set_default_dtype(previous)


def checkpoint_tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / "model.safetensors")


def test_one_fused_moe_per_sharing_group(sglang_world, tiny_checkpoint):
    from sglang.srt.layers.moe.fused_moe_triton import FusedMoE

    model = build(tiny_checkpoint)
    layers = model.model.layers
    assert isinstance(layers[1].mlp.experts, FusedMoE)
    assert layers[2].mlp.experts is layers[1].mlp.experts is layers[3].mlp.experts
    assert layers[4].mlp.experts is layers[6].mlp.experts is not layers[1].mlp.experts
    assert "experts" in layers[1].mlp._modules and "experts" not in layers[2].mlp._modules
    names = [n for n, _ in model.named_parameters()]
    assert sum(".mlp.experts." in n for n in names) == 4  # w13 + w2 at owners 1 and 4
    # every layer its own router, bias and TopK
    gates = {id(layers[l].mlp.gate.e_score_correction_bias) for l in range(1, 7)}
    assert len(gates) == 6
    assert all(layers[l].mlp.gate.e_score_correction_bias.dtype == torch.float32 for l in range(1, 7))
    assert len({id(layers[l].mlp.topk) for l in range(1, 7)}) == 6


def test_loads_every_parameter_once_and_holds_each_group_once(sglang_world, tiny_checkpoint):
    model = build(tiny_checkpoint)
    tensors = checkpoint_tensors(tiny_checkpoint)
    model.load_weights(tensors.items())
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    layer2 = model.model.layers[2].mlp
    ckpt = tensors["model.layers.1.mlp.experts.5.down_proj.weight"]
    assert torch.equal(layer2.experts.w2_weight[5], ckpt)
    assert torch.equal(layer2.gate.e_score_correction_bias,
                       tensors["model.layers.2.mlp.gate.e_score_correction_bias"])
    # memory: unique parameter bytes == checkpoint bytes (vocab rows padded to 64 aside)
    padded_rows = model.model.embed_tokens.weight.shape[0] - model.config.vocab_size
    padding = 2 * padded_rows * model.config.hidden_size * 2  # embed + lm_head, bf16
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())
    on_disk = sum(t.numel() * t.element_size() for t in tensors.values())
    assert loaded - padding == on_disk


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.pop("model.layers.5.mlp.shared_experts.up_proj.weight"),
     "model.layers.5.mlp.shared_experts.gate_up_proj.weight \\(written 1 of 2 pieces\\)"),
    (lambda t: t.pop("model.layers.4.mlp.experts.7.down_proj.weight"),
     "model.layers.4.mlp.experts.w2_weight \\(written 7 of 8 pieces\\)"),
    (lambda t: t.update({"model.layers.2.mlp.experts.0.up_proj.weight":
                         t["model.layers.1.mlp.experts.0.up_proj.weight"]}),
     "layer 2 is not the owner of its expert-sharing group"),
    (lambda t: t.update({"model.layers.3.mlp.gate.bias": torch.zeros(8)}),
     "'model.layers.3.mlp.gate.bias' \\(8,\\) has no place"),
    (lambda t: t.update({"model.layers.3.mlp.gate.weight": torch.zeros(9, 64)}),
     "'model.layers.3.mlp.gate.weight' has shape \\(9, 64\\), but this config expects \\(8, 64\\)"),
    (lambda t: t.update({"model.layers.2.self_attn.q_proj.weight": torch.zeros(60, 64)}),
     "'model.layers.2.self_attn.q_proj.weight' has shape \\(60, 64\\), but this config expects \\(64, 64\\)"),
])
def test_bad_checkpoint_fails_naming_the_tensor(sglang_world, tiny_checkpoint, mutate, message):
    from megrez_sglang.sglang_models.megrez_moe import CheckpointMismatch

    tensors = checkpoint_tensors(tiny_checkpoint)
    mutate(tensors)
    with pytest.raises(CheckpointMismatch, match=message):
        build(tiny_checkpoint).load_weights(tensors.items())


def test_a_tensor_given_twice_is_reported(sglang_world, tiny_checkpoint):
    from megrez_sglang.sglang_models.megrez_moe import CheckpointMismatch

    tensors = list(checkpoint_tensors(tiny_checkpoint).items())
    tensors.append(tensors[-1])
    with pytest.raises(CheckpointMismatch, match="written 2 of 1 pieces"):
        build(tiny_checkpoint).load_weights(tensors)
