"""Adaptive Bad-case Sampling (ABS, MLLM-DataEngine): how many new records each capability gets.

A capability's share of the round's budget is proportional to its error rate, with a floor so that
no capability is starved (a capability the model has learned still gets some data and is not
forgotten, and an error rate measured as 0 on a small probe may be luck):

    w_c = floor + (1 - K * floor) * e_c / sum_k e_k        (uniform when every e_k is 0)

Records are then dealt out by the largest-remainder method (ties: capability order), and every
capability gets at least one record; a budget smaller than the number of capabilities is refused.
"""

from __future__ import annotations

import math

SAMPLING_MODES = ("adaptive", "uniform")


class BudgetError(ValueError):
    """The budget cannot be dealt out (smaller than the number of capabilities, or negative)."""


def adaptive_weights(error_rates: dict[str, float], floor: float = 0.05) -> dict[str, float]:
    """ABS weights (module docstring); sum to 1, each at least `floor`."""
    if not error_rates:
        raise ValueError("no capabilities to sample")
    k = len(error_rates)
    if not 0.0 <= floor <= 1.0 / k:
        raise ValueError(f"the floor must be between 0 and 1/{k} (the number of capabilities), got {floor}")
    for name, rate in error_rates.items():
        if not 0.0 <= rate <= 1.0 or math.isnan(rate):
            raise ValueError(f"capability {name}: error rate {rate} is outside [0, 1]")
    total = sum(error_rates.values())
    if total == 0:
        return uniform_weights(list(error_rates))
    free = 1.0 - k * floor
    return {name: floor + free * rate / total for name, rate in error_rates.items()}


def uniform_weights(capabilities: list[str]) -> dict[str, float]:
    if not capabilities:
        raise ValueError("no capabilities to sample")
    return {name: 1.0 / len(capabilities) for name in capabilities}


def allocate(weights: dict[str, float], budget: int) -> dict[str, int]:
    """`budget` records dealt out in proportion to `weights` (largest remainder), at least one each."""
    k = len(weights)
    if budget < k:
        raise BudgetError(f"a budget of {budget} record(s) is smaller than the number of capabilities ({k}: "
                          f"{', '.join(weights)}); each needs at least one record")
    total = sum(weights.values())
    if total <= 0 or min(weights.values()) < 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    exact = {name: budget * w / total for name, w in weights.items()}
    counts = {name: int(math.floor(value)) for name, value in exact.items()}
    order = list(weights)
    by_remainder = sorted(order, key=lambda name: (-(exact[name] - counts[name]), order.index(name)))
    for name in by_remainder[: budget - sum(counts.values())]:
        counts[name] += 1
    # Nothing starved: a zero takes one record from the largest count (ties: the first capability).
    for name in order:
        if counts[name] == 0:
            donor = max(order, key=lambda other: (counts[other], -order.index(other)))
            counts[donor] -= 1
            counts[name] = 1
    return counts


def round_weights(mode: str, error_rates: dict[str, float], floor: float) -> dict[str, float]:
    """The sampling weights of a round from the previous round's error rates."""
    if mode == "adaptive":
        return adaptive_weights(error_rates, floor)
    if mode == "uniform":
        return uniform_weights(list(error_rates))
    raise ValueError(f"unknown sampling mode {mode!r}; known: {', '.join(SAMPLING_MODES)}")
