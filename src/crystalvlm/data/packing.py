"""Sequence packing: which samples of a micro-batch share a row.

Packing changes the layout of a micro-batch, never its contents: the same samples, in the same
global batch, at the same step, so the batch order stays a pure function of (seed, step) and the
loss (summed over trained tokens, divided by the trained tokens of the global batch) is the same.

Rows are filled first-fit decreasing. A row is as wide as the micro-batch's longest sample (which the
encoder already keeps within the stage's `max_length`), so a packed micro-batch is never wider than
its padded form: under attention with a dense block-diagonal mask (sdpa, eager) a row costs what one
padded row cost, and the number of rows drops to about sum(lengths) / longest. Attention kernels that
read the sample boundaries (flash-attention varlen) skip the masked blocks altogether.
"""

from __future__ import annotations


def pack_rows(lengths: list[int], row_length: int | None = None) -> list[list[int]]:
    """Positions in `lengths` grouped into rows whose lengths sum to at most `row_length` (default:
    the longest length). First-fit decreasing, ties broken by position, so the result depends on the
    lengths alone. Within a row the positions keep their order in `lengths`."""
    if not lengths:
        return []
    capacity = max(lengths) if row_length is None else row_length
    if max(lengths) > capacity:
        raise ValueError(f"a sample of {max(lengths)} tokens does not fit in a row of {capacity}")
    rows: list[list[int]] = []
    free: list[int] = []  # free[r]: tokens still free in rows[r]
    for position in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, space in enumerate(free):
            if lengths[position] <= space:
                rows[row].append(position)
                free[row] -= lengths[position]
                break
        else:
            rows.append([position])
            free.append(capacity - lengths[position])
    return [sorted(row) for row in rows]
