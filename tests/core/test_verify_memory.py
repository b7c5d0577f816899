"""`kassa verify` does not hold the ledger's records decoded all at once (a 3 GB ledger took 20 GB):
the journal, the lots and the request records are read through cursors, and what it keeps is
sums (core_ext/verify.py). On a real ledger in a temp directory, with half its journal archived."""

from __future__ import annotations

import tracemalloc

from kassa.core_ext import Ledger, Program
from kassa.core_ext.journal_archive import archive_dir_of, archive_journal
from kassa.core_ext.model import Code, CreateAccountOp
from tests.core.programs import program
from tests.core.test_compaction import CAMPAIGNS, DAY_MS, HOLD_TTL_S, T0_MS, purchase

MAP_SIZE_BYTES = 256 * 1024**2
PURCHASES = 4_000
GROUP_OPS = 500
# Measured with tracemalloc on this ledger: 1,286 bytes a purchase with every record decoded at
# once, 335 streamed (its per-lot and per-request sums).
VERIFY_PEAK_BYTES_PER_PURCHASE_MAX = 800


def test_verify_holds_sums_not_every_record(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger"), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S)
    try:
        assert ledger.apply([CreateAccountOp("create-A1", b"d", "A1")], T0_MS)[0].code == Code.OK
        for first in range(0, PURCHASES, GROUP_OPS):
            day_ms = T0_MS if first < PURCHASES // 2 else T0_MS + DAY_MS
            outcomes = ledger.apply([purchase(index) for index in range(first, first + GROUP_OPS)], day_ms)
            assert {outcome.code for outcome in outcomes} == {Code.OK}
        _, dbs = ledger.raw_transaction()
        archived = archive_journal(ledger.env, dbs, archive_dir_of(ledger.path), T0_MS + DAY_MS, now_ms=T0_MS + DAY_MS)
        assert archived.entries == PURCHASES // 2 + 1

        tracemalloc.start()
        try:
            violations = ledger.verify(T0_MS + 2 * DAY_MS)
            peak_bytes = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

        assert violations == []
        assert peak_bytes // PURCHASES <= VERIFY_PEAK_BYTES_PER_PURCHASE_MAX
    finally:
        ledger.close()
