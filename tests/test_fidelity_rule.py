"""The comparison rule shared by the CPU fidelity tests and the GPU check: equal greedy tokens,
except at a tie of the reference's logits, reported at the first divergence."""

import pytest
import torch

from megrez_sglang.model.fidelity import Greedy, assert_same_greedy, compare_greedy


def reference(tokens, logits_at):
    """A reference run whose logits at each step favour its token by the given margin."""
    steps = []
    for token, margin in zip(tokens, logits_at, strict=True):
        logits = torch.zeros(10)
        logits[token] = margin
        steps.append(logits)
    return Greedy(tokens, [-0.1] * len(tokens), steps)


def test_identical_tokens_and_logprobs_pass():
    ref = reference([1, 2, 3], [5.0, 5.0, 5.0])
    [c] = compare_greedy([ref], [([1, 2, 3], [-0.1, -0.1, -0.1005])])
    assert c.diverged_at is None and c.max_logprob_diff == pytest.approx(0.0005)
    assert_same_greedy([ref], [([1, 2, 3], [-0.1, -0.1, -0.1005])], logprob_tol=1e-3, tie_tol=1e-5)


def test_a_divergence_at_a_tie_is_accepted_and_the_rest_not_compared():
    ref = reference([1, 2, 3, 4], [5.0, 0.0, 5.0, 5.0])  # step 1: tokens 2 and 7 both at logit 0
    sglang = [([1, 7, 9, 9], [-0.1, -3.0, -9.0, -9.0])]
    [c] = compare_greedy([ref], sglang)
    assert (c.diverged_at, c.reference_token, c.sglang_token, c.logit_gap) == (1, 2, 7, 0.0)
    assert c.max_logprob_diff == 0.0  # only the common prefix (token 0) is compared
    assert_same_greedy([ref], sglang, logprob_tol=1e-3, tie_tol=1e-5)
    assert "first divergence at token 1 (reference 2, sglang 7" in c.describe()


def test_a_divergence_that_is_not_a_tie_fails_naming_the_position():
    ref = reference([1, 2, 3], [5.0, 5.0, 5.0])
    with pytest.raises(AssertionError, match="prompt 0 diverges at token 2: reference 3, sglang 4, "
                                             "reference logit gap 5 \\(not a tie"):
        assert_same_greedy([ref], [([1, 2, 4], [-0.1] * 3)], logprob_tol=1e-3, tie_tol=0.1)


def test_logprobs_beyond_the_tolerance_fail():
    ref = reference([1, 2], [5.0, 5.0])
    with pytest.raises(AssertionError, match="prompt 0: logprobs differ by 0.05"):
        assert_same_greedy([ref], [([1, 2], [-0.1, -0.15])], logprob_tol=1e-3, tie_tol=1e-5)


def test_a_different_number_of_tokens_fails():
    with pytest.raises(AssertionError, match="sglang gave 1 tokens, the reference 2"):
        compare_greedy([reference([1, 2], [5.0, 5.0])], [([1], [-0.1])])
