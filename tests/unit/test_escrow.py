"""The escrow bank of shared counters (core_ext/escrow.py) over a real directory environment.

Each case drives the partitions' `Escrow` as their writers do (`left` at evaluation, `spend` at each
counter write, `begin_group` before each group) and reads the bank and slices back from LMDB.
"""

from __future__ import annotations

import random

import pytest

from kassa.core_ext.escrow import Escrow, EscrowShort, check_banks, read_bank, slice_key
from kassa.core_ext.partitions import Directory

KEY = b"B:budget"


@pytest.fixture
def directory(tmp_path):
    opened = Directory(str(tmp_path), 2, sync=False)
    yield opened
    opened.close()


def escrows(directory, partitions: int = 2) -> list[Escrow]:
    return [Escrow(directory.env, directory.escrow, index, partitions) for index in range(partitions)]


def slice_of(directory, partition: int) -> int:
    with directory.env.begin() as txn:
        stored = txn.get(slice_key(KEY, partition), db=directory.escrow)
    return 0 if stored is None else int.from_bytes(stored, "big", signed=True)


def bank_of(directory, cap: int) -> int:
    with directory.env.begin() as txn:
        return read_bank(txn, directory.escrow, KEY, cap)[0]


class TestSlices:
    def test_a_refill_takes_the_need_and_a_share_of_the_rest(self, directory):
        first, _ = escrows(directory)
        assert first.left(KEY, 1_000, 0) == 1_000
        first.begin_group()
        first.spend(KEY, 7, 7)
        assert slice_of(directory, 0) == 7 + (1_000 - 7) // (4 * 2)
        assert bank_of(directory, 1_000) == 1_000 - slice_of(directory, 0)

    def test_a_spend_the_bank_no_longer_covers_raises_escrow_short(self, directory):
        first, second = escrows(directory)
        assert first.left(KEY, 10, 0) == 10  # evaluated against the whole bank
        second.left(KEY, 10, 0)
        second.begin_group()
        second.spend(KEY, 8, 8)  # meanwhile the other partition takes most of it
        first.begin_group()
        with pytest.raises(EscrowShort):
            first.spend(KEY, 10, 10)
        assert slice_of(directory, 0) == 0
        assert first.left(KEY, 10, 0) == 2  # evaluated again: what is left

    def test_a_give_back_never_goes_below_what_the_counter_was_before_the_group(self, directory):
        """A group rolls back 7 of partition 0's 14 and spends 3 with the bank empty: the slice
        keeps 14, the committed counter, in case the group aborts."""
        first, second = escrows(directory)
        first.left(KEY, 20, 0)
        first.begin_group()
        first.spend(KEY, 14, 14)
        second.left(KEY, 20, 0)
        second.begin_group()
        second.spend(KEY, 6, 6)
        assert bank_of(directory, 20) == 0
        first.begin_group()
        first.spend(KEY, 7, -7)
        first.spend(KEY, 10, 3)
        assert slice_of(directory, 0) == 14


class TestNeverOverspent:
    def test_random_spends_of_4_partitions_stay_within_the_cap_and_reach_it(self, directory_4):
        """Partitions ask for random amounts, each granted at most what `left` allows (as a
        campaign's allowance caps it); the sum of slices never passes the cap, and once the bank
        is empty and every partition gave its slack back, the counters sum to the cap."""
        seed = random.SystemRandom().randrange(2**32)
        print(f"escrow seed: {seed}")
        rng = random.Random(seed)
        cap = 1_000
        parts = escrows(directory_4, 4)
        spent = [0, 0, 0, 0]
        for _ in range(2_000):
            index = rng.randrange(4)
            left = parts[index].left(KEY, cap, spent[index])
            amount = min(rng.randint(1, 9), left)
            if amount <= 0:
                continue
            parts[index].begin_group()
            parts[index].spend(KEY, spent[index] + amount, amount)
            spent[index] += amount
            with directory_4.env.begin() as txn:
                assert check_banks(txn, directory_4.escrow, lambda partition, key: spent[partition]) == []
        assert sum(spent) == cap


@pytest.fixture
def directory_4(tmp_path):
    opened = Directory(str(tmp_path), 4, sync=False)
    yield opened
    opened.close()
