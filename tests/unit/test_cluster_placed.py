"""A partitioned ledger in a cluster (server/cluster/placed.py): shared caps split evenly, so that
what a partition may spend depends on its own log only (its grants from the escrow bank:
tests/cluster/test_escrow_slices.py)."""

from __future__ import annotations

import pytest

from kassa.server.cluster.placed import SplitEscrow, split_share


class TestSplitShare:
    @pytest.mark.parametrize("cap", [0, 1, 3, 4, 5, 1_000, 1_003])
    @pytest.mark.parametrize("partitions", [1, 2, 3, 4, 7])
    def test_the_shares_add_up_to_the_cap(self, cap, partitions):
        shares = [split_share(cap, partition, partitions) for partition in range(partitions)]
        assert sum(shares) == cap
        assert max(shares) - min(shares) <= 1


class TestSplitEscrow:
    def test_a_shared_counter_spends_from_the_partitions_share(self):
        escrow = SplitEscrow(partition=1, partitions=4)
        assert escrow.left(b"B:summer", 10, 0) == 3  # 10 over 4: 3, 3, 2, 2
        assert escrow.left(b"B:summer", 10, 3) == 0

    def test_a_counter_of_one_account_keeps_its_whole_cap(self):
        escrow = SplitEscrow(partition=1, partitions=4)
        assert escrow.left(b"D:acct:day", 10, 4) == 6
