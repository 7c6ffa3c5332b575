"""Adaptive Bad-case Sampling: shares proportional to error rates with a floor, whole records dealt out
by largest remainder, nothing starved, and a budget smaller than the capabilities refused."""

from __future__ import annotations

import pytest

from crystalvlm.dataengine.sampling import BudgetError, adaptive_weights, allocate, round_weights, uniform_weights


def test_weights_are_the_floor_plus_a_share_proportional_to_errors():
    weights = adaptive_weights({"a": 0.6, "b": 0.3, "c": 0.1, "d": 0.0}, floor=0.05)
    # free share 1 - 4 * 0.05 = 0.8, split 6:3:1:0
    assert weights == pytest.approx({"a": 0.05 + 0.48, "b": 0.05 + 0.24, "c": 0.05 + 0.08, "d": 0.05})
    assert sum(weights.values()) == pytest.approx(1.0)


def test_no_errors_anywhere_samples_uniformly():
    assert adaptive_weights({"a": 0.0, "b": 0.0}, floor=0.1) == {"a": 0.5, "b": 0.5}
    assert round_weights("uniform", {"a": 0.9, "b": 0.1, "c": 0.0}, 0.05) == pytest.approx(uniform_weights(["a", "b", "c"]))


def test_allocation_is_proportional_sums_to_the_budget_and_starves_nothing():
    weights = adaptive_weights({"a": 0.6, "b": 0.3, "c": 0.1, "d": 0.0}, floor=0.05)
    counts = allocate(weights, 100)
    assert counts == {"a": 53, "b": 29, "c": 13, "d": 5}
    # A tiny budget: every capability still gets one record, the rest goes by weight.
    assert allocate({"a": 0.97, "b": 0.01, "c": 0.01, "d": 0.01}, 5) == {"a": 2, "b": 1, "c": 1, "d": 1}
    # Remainders: 10 * (1/3) each -> 3, 3, 3 and the one left goes to the first capability.
    assert allocate(uniform_weights(["x", "y", "z"]), 10) == {"x": 4, "y": 3, "z": 3}


def test_a_budget_smaller_than_the_capabilities_is_refused():
    with pytest.raises(BudgetError, match="smaller than the number of capabilities"):
        allocate(uniform_weights(["a", "b", "c"]), 2)


def test_a_floor_above_one_over_k_is_refused():
    with pytest.raises(ValueError, match="floor"):
        adaptive_weights({"a": 0.5, "b": 0.5, "c": 0.5}, floor=0.4)
