"""The seq gap rule (`sensors.seq`): skipped numbers in ts order; a step down is a restart; no seq, no say."""

from __future__ import annotations

import pytest

from sensors.seq import gaps, missing_ranges


@pytest.mark.parametrize(
    ("seqs", "ranges"),
    [
        ([], []),
        ([0, 1, 2, 3], []),
        ([0, 1, 4, 5], [(2, 4)]),  # 2 and 3 lost
        ([5, 6, 0, 1, 3], [(2, 3)]),  # a restart at 0 is not a gap; the 2 after it is
        ([7, 9, 3, 4], [(8, 9)]),  # any step down is a restart
        ([1, 1, 2], []),  # a duplicate
        ([1, None, None, 2, None, 4], [(3, 4)]),  # readings without seq neither open nor close a gap
        ([None, None], []),
        ([0, 2**63 - 1], [(1, 2**63 - 1)]),  # the contract's whole range
    ],
)
def test_missing_ranges(seqs: list[int | None], ranges: list[tuple[int, int]]) -> None:
    assert list(missing_ranges(seqs)) == ranges
    assert gaps(seqs) == sum(end - first for first, end in ranges)
