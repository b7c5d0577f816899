"""What a partitioned ledger's layout says about itself (core_ext/partitions.py), on real LMDB files."""

from __future__ import annotations

import lmdb

from kassa.core_ext.partitions import DIRECTORY_NAME, stored_partitions


class TestStoredPartitions:
    def test_a_directory_another_worker_is_still_making_reads_as_no_ledger_yet(self, tmp_path):
        """Two workers start at once: one has made the directory's file, not yet its databases;
        the other must not fail on it (it did: mdb_dbi_open: Permission denied)."""
        env = lmdb.open(str(tmp_path / DIRECTORY_NAME), max_dbs=4)
        env.close()
        assert stored_partitions(str(tmp_path)) is None

    def test_a_plain_ledger_has_one_partition(self, tmp_path):
        env = lmdb.open(str(tmp_path))
        env.close()
        assert stored_partitions(str(tmp_path)) == 1

    def test_nothing_there_is_no_ledger(self, tmp_path):
        assert stored_partitions(str(tmp_path / "nothing")) is None
