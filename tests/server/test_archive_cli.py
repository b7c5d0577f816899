"""`kassa archive`, `kassa verify` and `kassa backup` with a journal archive, as real CLI processes
over a real LMDB ledger: the archive moves the closed period out, verify proves it, a backup copies
and names the segments it needs, and the copy restored elsewhere verifies and reads across the
boundary; a segment changed after the fact is a violation naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kassa.core_ext import records as rec
from kassa.core_ext.journal_archive import ArchiveReader, archive_dir_of, statement_page
from kassa.core_ext.ledger import DB_NAMES, MAX_DBS
from tests.core.archive_ledger import ACCOUNTS, fill, open_ledger

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 120
BEFORE = "2026-06-04"  # midnight UTC, inside the fixture's day 2 (its days start 2026-06-01T08:00Z)


def kassa(ledger_path: Path, *args: str) -> subprocess.CompletedProcess:
    # Compaction off: the archive then takes every entry older than the period and the return window
    # (with it on, only those whose requests it has forgotten: tests/core/test_journal_archive.py).
    environ = {**os.environ, "KASSA_LEDGER_PATH": str(ledger_path), "KASSA_LEDGER_COMPACTION_INTERVAL_S": "0"}
    return subprocess.run([sys.executable, "-m", "kassa.server.cli", *args, "--config", str(REPO / "config" / "kassa.toml")],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def last_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def ledger_path(tmp_path) -> Path:
    ledger = open_ledger(tmp_path / "ledger")
    fill(ledger, range(0, 6))
    ledger.close()
    return tmp_path / "ledger"


def statement_ids(path: Path, account_id: str) -> list[int]:
    import lmdb

    env = lmdb.open(str(path), max_dbs=MAX_DBS, readonly=True, lock=False)
    try:
        dbs = {name.decode(): env.open_db(name, create=False) for name in DB_NAMES}
        with env.begin() as txn:
            get = lambda name, key: txn.get(key, db=dbs[name])  # noqa: E731
            last_txn_id = rec.decode_account(get("accounts", account_id.encode())).last_txn_id
            entries, _ = statement_page(txn, dbs, ArchiveReader(archive_dir_of(path)), account_id, last_txn_id, 500)
    finally:
        env.close()
    return [entry.txn_id for entry in entries]


def test_archive_verify_backup_restore_verify(ledger_path, tmp_path):
    statement_before = statement_ids(ledger_path, ACCOUNTS[0])

    archived = kassa(ledger_path, "archive", "--before", BEFORE)
    verified = kassa(ledger_path, "verify")
    backup = kassa(ledger_path, "backup", str(tmp_path / "backup"))
    restored = tmp_path / "restored"
    shutil.copytree(tmp_path / "backup", restored)  # restore: copy the backup back as a ledger directory
    verified_restored = kassa(restored, "verify")

    assert archived.returncode == 0, archived.stderr
    assert last_json(archived)["entries"] > 0
    assert verified.returncode == 0, verified.stdout
    assert last_json(verified)["archive_segments"] == 1
    assert backup.returncode == 0, backup.stderr
    assert last_json(backup)["archive_segments"] == last_json(archived)["segments"]
    assert verified_restored.returncode == 0, verified_restored.stdout
    assert statement_ids(restored, ACCOUNTS[0]) == statement_before


def test_verify_names_a_changed_segment(ledger_path):
    archived = last_json(kassa(ledger_path, "archive", "--older-than-days", "1"))
    segment = archive_dir_of(ledger_path) / archived["segments"][0]
    data = bytearray(segment.read_bytes())
    data[-10] ^= 0xFF
    segment.write_bytes(bytes(data))

    verified = kassa(ledger_path, "verify")

    assert verified.returncode == 1
    assert f"VIOLATION archive segment {segment.name}: sha256" in verified.stdout


def test_a_before_that_is_no_date_is_refused_naming_the_flag(ledger_path):
    refused = kassa(ledger_path, "archive", "--before", "last tuesday")

    assert refused.returncode == 2
    assert "--before" in refused.stderr
    assert not archive_dir_of(ledger_path).exists()
