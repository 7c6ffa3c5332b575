"""Packing the LM corpus into blocks: a line that fits in a block is never cut in two."""

from __future__ import annotations

import pytest
import torch

from crystalvlm.worlds.parts.lm import pack_lines

PAD = 0


def _rows(input_ids, labels) -> list[list[int]]:
    rows = []
    for ids, targets in zip(input_ids.tolist(), labels.tolist()):
        kept = [token for token, target in zip(ids, targets) if target != -100]
        assert ids[len(kept):] == [PAD] * (len(ids) - len(kept))  # padding only at the end
        assert kept == ids[: len(kept)]  # labels are the tokens themselves where trained
        rows.append(kept)
    return rows


def test_short_lines_stay_whole_and_nothing_is_lost():
    lines = [[1] * 5, [2] * 4, [3] * 3, [4] * 6, [5] * 2]
    input_ids, labels = pack_lines(lines, block=8, pad_id=PAD)
    assert input_ids.shape == labels.shape == (3, 8)
    rows = _rows(input_ids, labels)
    assert rows == [[1] * 5, [2] * 4 + [3] * 3, [4] * 6 + [5] * 2]  # a line that exactly fills a block joins it
    assert [t for row in rows for t in row] == [t for line in lines for t in line]


def test_long_lines_fill_whole_blocks():
    lines = [[7] * 3, list(range(10, 30)), [8] * 2]
    rows = _rows(*pack_lines(lines, block=8, pad_id=PAD))
    assert rows == [[7] * 3, list(range(10, 18)), list(range(18, 26)), list(range(26, 30)) + [8] * 2]


def test_empty_corpus_is_refused():
    with pytest.raises(ValueError, match="empty"):
        pack_lines([], block=8, pad_id=PAD)


def test_best_fit_keeps_every_line_whole_in_fewer_blocks():
    from crystalvlm.worlds.parts.lm import pack_lines_best_fit

    lines = [[n] * length for n, length in enumerate([5, 4, 3, 6, 2, 7, 1, 3, 5, 4], start=1)]
    input_ids, labels = pack_lines_best_fit(lines, block=8, pad_id=PAD, seed=0)
    rows = _rows(input_ids, labels)
    pieces = sorted(tuple(row[i:j]) for row in rows for i, j in _runs(row))
    assert pieces == sorted(tuple(line) for line in lines)  # every line once, none cut in two
    assert len(rows) == 5 < len(_rows(*pack_lines(lines, block=8, pad_id=PAD)))  # 40 tokens in 5 blocks of 8
    again = pack_lines_best_fit(lines, block=8, pad_id=PAD, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again, (input_ids, labels)))  # deterministic for a seed


def test_best_fit_cuts_only_lines_longer_than_a_block():
    from crystalvlm.worlds.parts.lm import pack_lines_best_fit

    rows = _rows(*pack_lines_best_fit([list(range(10, 30)), [7] * 3], block=8, pad_id=PAD, seed=1))
    assert sorted(len(row) for row in rows) == [3 + 4, 8, 8]  # the long line's 4-token tail shares a block
    assert sorted(t for row in rows for t in row) == sorted(list(range(10, 30)) + [7] * 3)


def _runs(row: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of equal tokens: the test's lines are each one repeated token."""
    runs, start = [], 0
    for index in range(1, len(row) + 1):
        if index == len(row) or row[index] != row[start]:
            runs.append((start, index))
            start = index
    return runs
