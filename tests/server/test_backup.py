"""`kassa backup DIR`: a consistent hot copy of the ledger, taken while purchases keep committing.

The copy must pass `kassa verify` on its own, hold every transaction acknowledged before the backup
started (and nothing that was never sent), and serve as a ledger again."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import lmdb

from kassa.core_ext.ledger import MAX_DBS
from kassa.core_ext.records import decode_txn
from kassa.v1 import accounts_pb2, processing_pb2
from tests.server.helpers import balance, by_account, earn, line, open_account, receipt, statement

ACCOUNTS = [f"A-{n}" for n in range(4)]
LOAD_BEFORE_S = 1.0  # seconds of load before the backup starts
LOAD_AFTER_S = 1.0  # and after it ended


class Load:
    """Accrues in a thread, round robin over ACCOUNTS; remembers what was acknowledged and when."""

    def __init__(self, kassa):
        self.channel = grpc.insecure_channel(kassa.address)
        self.stub = type(kassa.processing)(self.channel)
        self.sent: list[str] = []
        self.acked: list[tuple[float, str]] = []  # (monotonic time of the answer, request_id)
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            request_id = f"load-{n}"
            account_id = ACCOUNTS[n % len(ACCOUNTS)]
            self.sent.append(request_id)
            request = processing_pb2.AccrueRequest(
                request_id=request_id, customer=by_account(account_id),
                receipt=receipt(line(1, 2_000 + n % 7), receipt_no=request_id))
            try:
                self.stub.Accrue(request, timeout=10)
                self.acked.append((time.monotonic(), request_id))
            except grpc.RpcError as error:
                self.errors.append(f"{request_id}: {error.code().name} {error.details()}")
            n += 1

    def acked_before(self, moment: float) -> set[str]:
        return {request_id for at, request_id in self.acked if at < moment}


def backup(kassa, target) -> subprocess.CompletedProcess:
    return kassa.run_cli("backup", str(target), "--config", str(kassa.config_path()))


def verify_copy(kassa, copy) -> tuple[subprocess.CompletedProcess, dict]:
    """`kassa verify` with the copy as the ledger."""
    result = subprocess.run(
        [sys.executable, "-m", "kassa.server.cli", "verify", "--config", str(kassa.config_path())],
        cwd=kassa.workdir, env={**kassa.environ, "KASSA_LEDGER_PATH": str(copy)},
        capture_output=True, text=True, timeout=120)
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def request_ids_in(copy) -> set[str]:
    """The request ids that made a transaction in the ledger at `copy`, from its journal."""
    decode = decode_txn  # every stored format of a journal entry
    env = lmdb.open(str(copy), max_dbs=MAX_DBS, readonly=True, lock=False)
    try:
        journal = env.open_db(b"journal")
        with env.begin() as txn:
            return {decode(value).request_id for _, value in txn.cursor(db=journal)}
    finally:
        env.close()


class TestBackupUnderLoad:
    def test_a_backup_taken_under_load_verifies_and_holds_every_acknowledged_transaction(
            self, kassa, start_kassa, tmp_path):
        for account_id in ACCOUNTS:
            open_account(kassa, account_id)
        earn(kassa, "A-0", 500, request_id="before-load")
        load = Load(kassa)
        load.thread.start()
        time.sleep(LOAD_BEFORE_S)

        started = time.monotonic()
        result = backup(kassa, tmp_path / "copy")
        time.sleep(LOAD_AFTER_S)
        load.stop.set()
        load.thread.join(30)
        load.channel.close()

        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is True
        assert not load.errors, load.errors[:5]
        assert len(load.acked_before(started)) >= 20, "the load did not run before the backup"
        assert any(started <= at for at, _ in load.acked), "the load did not run during the backup"

        checked, summary = verify_copy(kassa, tmp_path / "copy")
        assert checked.returncode == 0 and summary["ok"] is True, checked.stdout + checked.stderr
        in_copy = request_ids_in(tmp_path / "copy")
        missing = load.acked_before(started) - in_copy
        assert not missing, f"acknowledged before the backup, missing from it: {sorted(missing)[:10]}"
        assert "before-load" in in_copy
        loaded = {request_id for request_id in in_copy if request_id.startswith("load-")}
        assert loaded <= set(load.sent), "the copy holds requests that were never sent"
        assert len(loaded) < len(load.acked), "the copy is a snapshot: what committed after it is not in it"

        # The copy serves: its balances add up to what its own journal holds.
        restored = start_kassa(env={"KASSA_LEDGER_PATH": str(tmp_path / "copy")})
        for account_id in ACCOUNTS:
            entries = statement(restored, account_id)
            earned = sum(t.earned_points for t in entries if t.kind == accounts_pb2.TRANSACTION_KIND_ACCRUE)
            assert balance(restored, account_id).active_points == earned
        assert balance(kassa, "A-0").active_points >= balance(restored, "A-0").active_points

    def test_backup_refuses_a_directory_that_is_not_empty(self, kassa, tmp_path):
        open_account(kassa, "A-1")
        target = tmp_path / "busy"
        target.mkdir()
        (target / "keep.txt").write_text("mine")

        result = backup(kassa, target)

        assert result.returncode == 2
        assert "not empty" in result.stderr
        assert [p.name for p in target.iterdir()] == ["keep.txt"]
