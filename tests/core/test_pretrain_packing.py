"""Packing the LM corpus into blocks: a line that fits in a block is never cut in two."""

from __future__ import annotations

import pytest

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
