"""An archive run killed (SIGKILL) at each of its steps: every journal entry is still in the journal
or in a listed segment whose sha256 holds, never in neither; a second run finishes the job, and the
ledger verifies with every statement as it was.

The archiver runs in a child process that opens the ledger as `kassa archive` does and SIGKILLs
itself right after the named step: "written" (segment and manifest fsynced, not listed), "listed"
(listed with its checkpoints, entries still in the journal), "deleting" (the first batch deleted).
The ledger the kill left verifies as it is.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kassa.core_ext import records as rec
from kassa.core_ext.journal_archive import archive_dir_of, archive_journal, read_index
from kassa.core_ext.journal_archive import segments
from kassa.core_ext.ledger import DB_NAMES, MAX_DBS
from kassa.core_ext.limits import MS_PER_DAY
from kassa.core_ext.model import Code
from kassa.core_ext.verify import check_ledger
from tests.core.archive_ledger import ACCOUNTS, BOUNDARY_MS, T0_MS, by_account, fill, open_ledger

NOW_MS = T0_MS + 6 * MS_PER_DAY
CHILD_TIMEOUT_S = 60
SEGMENT_ENTRIES = 50  # entries per segment here: the archived period makes three segments
DELETE_BATCH = 20  # entries per delete transaction here: "deleting" stops inside the deletes

CHILD = r"""
import os, signal, sys
import lmdb
from kassa.core_ext.journal_archive import archiving
from kassa.core_ext.ledger import DB_NAMES, MAX_DBS

path, stop_after, before_ms, now_ms, segment_entries, delete_batch = sys.argv[1:7]
archiving.DELETE_ENTRIES_PER_TXN = int(delete_batch)
env = lmdb.open(path, max_dbs=MAX_DBS, map_size=64 * 1024**2)
dbs = {name.decode(): env.open_db(name) for name in DB_NAMES}
stops = {"written": 2, "listed": 2, "deleting": 1}  # the second segment's, or the first delete

def step(name):
    if name == stop_after:
        stops[name] -= 1
        if stops[name] == 0:
            os.kill(os.getpid(), signal.SIGKILL)

archiving.archive_journal(env, dbs, archiving.archive_dir_of(path), int(before_ms), now_ms=int(now_ms),
                          segment_entries_max=int(segment_entries), on_step=step)
"""


def open_raw(path: Path):
    import lmdb

    env = lmdb.open(str(path), max_dbs=MAX_DBS, map_size=64 * 1024**2)
    return env, {name.decode(): env.open_db(name) for name in DB_NAMES}


def statements(path: Path) -> dict[str, list[int]]:
    ledger = open_ledger(path)
    try:
        found = {}
        for account_id in ACCOUNTS:
            outcome = ledger.statement(by_account(account_id), 500, 0)
            assert outcome.code == Code.OK
            found[account_id] = [view.transaction_id for view in outcome.body.transactions]
        return found
    finally:
        ledger.close()


def kept_ids(path: Path) -> set[int]:
    """Ids in the journal or in a listed segment whose sha256 holds."""
    env, dbs = open_raw(path)
    try:
        with env.begin() as txn:
            ids = {int.from_bytes(key, "big") for key, _ in txn.cursor(db=dbs["journal"])}
            index = read_index(txn, dbs)
    finally:
        env.close()
    directory = archive_dir_of(path)
    for ref in index:
        assert segments.segment_sha256(directory / ref.name) == ref.sha256
        ids |= {segments.entry_of_line(line).txn_id for line in segments.segment_lines(directory / ref.name)}
    return ids


@pytest.fixture
def ledger_path(tmp_path) -> Path:
    ledger = open_ledger(tmp_path / "ledger")
    fill(ledger, range(0, 6))
    ledger.close()
    return tmp_path / "ledger"


@pytest.mark.parametrize("stop_after", ["written", "listed", "deleting"])
def test_a_run_killed_after_each_step_loses_nothing_and_a_rerun_finishes(ledger_path, stop_after):
    statements_before = statements(ledger_path)
    ids_before = kept_ids(ledger_path)

    child = subprocess.run([sys.executable, "-c", CHILD, str(ledger_path), stop_after, str(BOUNDARY_MS),
                            str(NOW_MS), str(SEGMENT_ENTRIES), str(DELETE_BATCH)],
                           capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert kept_ids(ledger_path) == ids_before  # every entry in the journal or a listed segment
    left = _left_behind(ledger_path)
    assert left == {"written": (1, 0), "listed": (2, SEGMENT_ENTRIES), "deleting": (1, SEGMENT_ENTRIES - DELETE_BATCH)}[stop_after]

    env, dbs = open_raw(ledger_path)
    try:
        with env.begin() as txn:  # the state the kill left is a sound ledger too
            assert check_ledger(txn, dbs, NOW_MS, archive_dir_of(ledger_path)) == []
        result = archive_journal(env, dbs, archive_dir_of(ledger_path), BOUNDARY_MS, now_ms=NOW_MS,
                                 segment_entries_max=SEGMENT_ENTRIES)
        with env.begin() as txn:
            violations = check_ledger(txn, dbs, NOW_MS, archive_dir_of(ledger_path))
            oldest = int.from_bytes(next(iter(txn.cursor(db=dbs["journal"])))[0], "big")
    finally:
        env.close()

    assert violations == []
    assert oldest == result.archived_below_txn_id
    assert kept_ids(ledger_path) == ids_before
    assert _archived_statements(ledger_path) == statements_before


def _left_behind(path: Path) -> tuple[int, int]:
    """(segments listed, entries below the boundary still in the journal) after the kill."""
    env, dbs = open_raw(path)
    try:
        with env.begin() as txn:
            index = read_index(txn, dbs)
            below = index[-1].last_txn_id + 1 if index else 0
            left = sum(1 for key, _ in txn.cursor(db=dbs["journal"]) if int.from_bytes(key, "big") < below)
    finally:
        env.close()
    return len(index), left


def _archived_statements(path: Path) -> dict[str, list[int]]:
    """Every account's statement read across the boundary, newest first."""
    from kassa.core_ext.journal_archive import ArchiveReader, statement_page

    env, dbs = open_raw(path)
    reader = ArchiveReader(archive_dir_of(path))
    found = {}
    try:
        with env.begin() as txn:
            get = lambda name, key: txn.get(key, db=dbs[name])  # noqa: E731
            for account_id in ACCOUNTS:
                last_txn_id = rec.decode_account(get("accounts", account_id.encode())).last_txn_id
                entries, _ = statement_page(txn, dbs, reader, account_id, last_txn_id, 500)
                found[account_id] = [entry.txn_id for entry in entries]
    finally:
        env.close()
    return found
