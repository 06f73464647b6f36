"""The publisher's demo on CUDA (sglang 0.4.9.post2): the fused-MoE kernel is given
routed_scaling_factor (its combine multiplies by it) and the model multiplies the routed output by
it again. Here: this project's model with the factor handed to the kernel as well."""

from megrez_sglang.sglang_models.megrez_moe import MegrezMoeForCausalLM


class MegrezMoeDoubleScaledForCausalLM(MegrezMoeForCausalLM):
    def __init__(self, config, quant_config=None, prefix: str = ""):
        super().__init__(config, quant_config, prefix)
        for layer in self.model.layers:
            experts = getattr(layer.mlp, "experts", None)
            if experts is not None:  # the MoE runner reads this config object at each call
                experts.moe_runner_config.routed_scaling_factor = config.routed_scaling_factor


EntryClass = MegrezMoeDoubleScaledForCausalLM
