"""The ledger's LMDB map grows by itself (core_ext/map_size.py): a real ledger in a temp directory,
real read transactions held open in another thread, a real disk's free space."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from kassa.core_ext import Ledger, LedgerError, Program, load_program
from kassa.core_ext.model import AccrueOp, Code, CreateAccountOp, Customer, IdKind, Line, Receipt

REPO = Path(__file__).resolve().parents[2]
MAP_START_BYTES = 1024**2
MAP_MAX_BYTES = 16 * 1024**2
HOLD_TTL_S = 900
T0_MS = 1_780_300_800_000
GROUP_PURCHASES = 6_000  # some 2.5 MiB of ledger (one-line purchases of one account): more than the starting map holds
READ_HELD_S = 1.0  # how long a read stays open while the group that outgrew the map waits


def open_ledger(path: Path, map_size_bytes_max: int = MAP_MAX_BYTES, disk_reserve_bytes: int = 0) -> Ledger:
    ledger = Ledger(str(path), Program(load_program([REPO / "config" / "rules"])), MAP_START_BYTES, HOLD_TTL_S,
                    sync=False, map_size_bytes_max=map_size_bytes_max, disk_reserve_bytes=disk_reserve_bytes)
    (created,) = ledger.apply([CreateAccountOp("create/A", b"create/A", "A")], T0_MS)
    assert created.code == Code.OK
    return ledger


def purchases(first: int, count: int) -> list[AccrueOp]:
    line = Line(1, "SKU-1", "grocery/bakery", 1000, 10_000, 10_000)
    return [AccrueOp(f"buy/{n}", f"buy/{n}".encode(), Customer(IdKind.ACCOUNT, "A"), Receipt("store-1", "t1", str(n), (line,)))
            for n in range(first, first + count)]


def grown_lines(caplog) -> list[dict]:
    return [record.fields for record in caplog.records if record.getMessage() == "ledger map grown"]


class TestGrowth:
    def test_a_group_larger_than_the_map_is_applied_whole_in_a_grown_map(self, tmp_path, caplog):
        caplog.set_level(logging.INFO, logger="kassa.ledger")
        ledger = open_ledger(tmp_path)

        outcomes = ledger.apply(purchases(0, GROUP_PURCHASES), T0_MS)

        assert {outcome.code for outcome in outcomes} == {Code.OK}
        assert ledger.stats()["map_bytes"] > MAP_START_BYTES
        steps = grown_lines(caplog)
        assert steps, "the map grew without a 'ledger map grown' line"
        assert steps[0] == {"from_bytes": MAP_START_BYTES, "to_bytes": 2 * MAP_START_BYTES}
        assert ledger.verify(T0_MS) == []
        ledger.close()

    def test_a_reopened_ledger_keeps_the_grown_map(self, tmp_path):
        ledger = open_ledger(tmp_path)
        ledger.apply(purchases(0, GROUP_PURCHASES), T0_MS)
        grown = ledger.stats()["map_bytes"]
        ledger.close()

        reopened = Ledger(str(tmp_path), Program(load_program([REPO / "config" / "rules"])), MAP_START_BYTES,
                          HOLD_TTL_S, sync=False)

        assert reopened.stats()["map_bytes"] == grown
        reopened.close()

    def test_a_read_open_while_the_map_must_grow_is_waited_for_and_stays_valid(self, tmp_path, caplog):
        caplog.set_level(logging.INFO, logger="kassa.ledger")
        ledger = open_ledger(tmp_path)
        outcomes: list = []
        writer = threading.Thread(target=lambda: outcomes.extend(ledger.apply(purchases(0, GROUP_PURCHASES), T0_MS)))

        _, dbs = ledger.raw_transaction()  # (a transaction not begun, and the databases)
        with ledger.env.begin() as txn:
            before = txn.get(b"next_txn_id", db=dbs["meta"])
            writer.start()
            time.sleep(READ_HELD_S)
            assert writer.is_alive(), "the group that outgrew the map finished while a read was open"
            assert not grown_lines(caplog), "the map was resized under an open read transaction"
            still = txn.get(b"next_txn_id", db=dbs["meta"])  # raises if invalidated
        writer.join(30)

        assert still == before
        assert not writer.is_alive()
        assert {outcome.code for outcome in outcomes} == {Code.OK}
        assert grown_lines(caplog)
        ledger.close()


class TestLimits:
    def test_the_stats_name_the_limit_the_map_can_grow_to(self, tmp_path):
        ample = open_ledger(tmp_path / "ample")  # the test disk has far more than 16 MiB free
        tight = open_ledger(tmp_path / "tight", disk_reserve_bytes=1024**5)

        assert ample.stats()["map_limit_bytes"] == MAP_MAX_BYTES
        assert tight.stats()["map_limit_bytes"] == MAP_START_BYTES  # the disk's reserve: no room to grow
        ample.close()
        tight.close()

    def test_at_the_max_the_group_is_refused_naming_the_key_and_nothing_is_written(self, tmp_path):
        ledger = open_ledger(tmp_path, map_size_bytes_max=MAP_START_BYTES)
        (before,) = ledger.apply(purchases(10**6, 1), T0_MS)

        with pytest.raises(LedgerError) as refused:  # the group committer answers it to every caller
            ledger.apply(purchases(0, GROUP_PURCHASES), T0_MS)

        assert refused.value.code == Code.RESOURCE_EXHAUSTED
        assert "raise ledger.map_size_bytes_max" in str(refused.value), refused.value
        (again,) = ledger.apply(purchases(0, 1), T0_MS)  # the first of the refused group: never applied
        assert again.code == Code.OK
        assert again.body.transaction_id == before.body.transaction_id + 1
        assert ledger.stats()["map_bytes"] == MAP_START_BYTES
        ledger.close()

    def test_the_map_does_not_grow_into_the_disk_reserve(self, tmp_path):
        ledger = open_ledger(tmp_path, disk_reserve_bytes=1024**5)  # more than any test disk has free

        with pytest.raises(LedgerError) as refused:
            ledger.apply(purchases(0, GROUP_PURCHASES), T0_MS)

        assert refused.value.code == Code.RESOURCE_EXHAUSTED
        assert "free space" in str(refused.value), refused.value
        assert "ledger.disk_reserve_bytes" in str(refused.value), refused.value
        assert ledger.stats()["map_bytes"] == MAP_START_BYTES
        ledger.close()
