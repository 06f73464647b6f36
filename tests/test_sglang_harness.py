"""SGLang's own model-comparison harness as a peer check: HFRunner (the reference model through
transformers) against SRTRunner (an SGLang engine) on the trained tiny checkpoint, judged by
SGLang's own ``check_close_model_outputs`` with the tolerances its repository uses for models
(test/srt/models/test_generation_models.py: ModelCase prefill 5e-2, decode 5e-2, ROUGE-L 1).

In float32 both sides agree to ~4e-6. In float16 (SGLang's test default) the outputs are equal but
one prompt's prefill differs by 0.5: two routing decisions of the float32 reference are near-ties
(biased-score gaps 3.5e-4 and 5.1e-4) that flip in SGLang's float16 run; the second test shows the
difference is exactly that (docs/gpu-topk.md, "SGLang's own harness"). No tolerance is loosened.
"""

import pytest
import torch

from bench import hf_vs_srt
from megrez_sglang.model.model_path import TRAINED_CHECKPOINT

# SRTRunner's output collection on the engines lane's pooled engine (bench.hf_vs_srt.run_harness):
# an SRTRunner of its own would start one more engine and, on exit, kill every child process of
# the test run.


def test_sglangs_harness_float32_hf_and_srt_agree_by_sglangs_own_check(engines):
    from sglang.test.runners import check_close_model_outputs

    engine = engines.get(str(TRAINED_CHECKPOINT), dtype="float32")
    hf, srt = hf_vs_srt.run_harness(torch.float32, engine=engine)
    check_close_model_outputs(hf, srt, hf_vs_srt.PREFILL_TOLERANCE, hf_vs_srt.DECODE_TOLERANCE,
                              hf_vs_srt.ROUGE_L_TOLERANCE)
    result = hf_vs_srt.summarize("float32", hf, srt)
    # beyond SGLang's bar: identical text, logprobs within float32 rounding
    assert all(result.outputs_equal), (hf.output_strs, srt.output_strs)
    assert max(result.prefill_diff) < 1e-4 and max(result.decode_diff) < 1e-4, result


NEAR_TIE_PROMPT = "AI is a field of computer science focused on"


def test_in_float16_the_one_prefill_disagreement_is_two_near_tie_routing_flips(engines):
    """SGLang's check fails in float16 on NEAR_TIE_PROMPT; the float32 reference with two of its
    closest routing decisions flipped lands on SGLang's float16 prefill within SGLang's tolerance."""
    from sglang.test.runners import check_close_model_outputs

    engine = engines.get(str(TRAINED_CHECKPOINT), dtype="float16")
    hf, srt = hf_vs_srt.run_harness(torch.float16, prompts=[NEAR_TIE_PROMPT], engine=engine)
    assert hf.output_strs == srt.output_strs
    with pytest.raises(AssertionError, match="prefill logprobs are not all close"):
        check_close_model_outputs(hf, srt, hf_vs_srt.PREFILL_TOLERANCE, hf_vs_srt.DECODE_TOLERANCE,
                                  hf_vs_srt.ROUGE_L_TOLERANCE)
    model32, tokenizer = hf_vs_srt.load_hf_reference(torch.float32)
    ids = tokenizer.encode(NEAR_TIE_PROMPT)
    baseline, flips, explained = hf_vs_srt.explain_by_near_ties(ids, model32, srt.top_input_logprobs[0],
                                                                candidates=4)
    assert baseline > 0.4
    assert [(f.layer, f.position) for f in flips] == [(4, 0), (3, 1)]
    assert all(f.gap < 1e-3 for f in flips), flips
    assert explained < hf_vs_srt.PREFILL_TOLERANCE / 4
