"""Through a real server: compaction forgets the requests past the return window, `kassa archive`
then moves their entries while it serves; ListTransactions pages across the archive boundary and
returns every entry once, as before; a very late retry of an archived purchase is refused
REQUEST_TOO_OLD, never applied again; a Rollback of an archived transaction reads it from the
archive and is applied, and `kassa verify` still passes. A purchase archived once the replay window
has passed can be returned by `original_request_id`, and its record still leaves the ledger after
the return window.
"""

from __future__ import annotations

import json
import time

import lmdb

import grpc
import pytest
from google.protobuf import timestamp_pb2

from kassa.v1 import accounts_pb2, processing_pb2
from tests.kassa_harness import T0_MS
from tests.server.helpers import by_account, earn, line, open_account, receipt, redeem, rollback

ACCOUNT = "ARCH-1"
OLD_PURCHASES = 8
NEW_PURCHASES = 5
PAGE_SIZE = 3  # pages that start on both sides of the boundary and one that crosses it
DAYS_BETWEEN = 10
DAY_S = 86_400  # seconds
# Windows of days, so that the old purchases are forgotten DAYS_BETWEEN days later.
WINDOWS = {"KASSA_LEDGER_REPLAY_WINDOW_S": str(DAY_S), "KASSA_LEDGER_RETURN_WINDOW_S": str(2 * DAY_S),
           "KASSA_LEDGER_COMPACTION_INTERVAL_S": "0.2"}
OLD_REQUESTS = 1 + OLD_PURCHASES + 1  # the account's creation, the purchases, the redeem
COMPACTION_WAIT_S_MAX = 30.0
POLL_S = 0.1


def pages(kassa, account_id: str) -> list[bytes]:
    """The statement page by page, each transaction serialised."""
    found, token = [], ""
    while True:
        page = kassa.accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(
            customer=by_account(account_id), page_size=PAGE_SIZE, page_token=token))
        found += [transaction.SerializeToString(deterministic=True) for transaction in page.transactions]
        token = page.next_page_token
        if not token:
            return found


def forgotten(kassa) -> int:
    """Requests compaction forgot so far, from the server's log."""
    lines = [json.loads(line) for line in kassa.log_lines if '"msg":"compaction"' in line]
    return sum(line.get("requests_forgotten", 0) for line in lines)


def dropped(kassa) -> int:
    """Answers compaction dropped so far, from the server's log."""
    lines = [json.loads(line) for line in kassa.log_lines if '"msg":"compaction"' in line]
    return sum(line.get("answers_dropped", 0) for line in lines)


def wait_for(count, at_least: int, kassa) -> None:
    deadline = time.monotonic() + COMPACTION_WAIT_S_MAX
    while count(kassa) < at_least:
        assert time.monotonic() < deadline, "compaction did not get there:\n" + "".join(kassa.log_lines[-20:])
        time.sleep(POLL_S)


def entries(kassa, name: bytes) -> int:
    env = lmdb.open(str(kassa.ledger_path), readonly=True, lock=True, max_dbs=16, subdir=True)
    try:
        with env.begin() as txn:
            return txn.stat(env.open_db(name, txn=txn, create=False))["entries"]
    finally:
        env.close()


def test_statements_retries_and_rollbacks_across_the_archive_boundary(start_kassa):
    kassa = start_kassa(env=WINDOWS)
    open_account(kassa, ACCOUNT)
    old = [earn(kassa, ACCOUNT, 10 + n, f"old/{n}") for n in range(OLD_PURCHASES)]
    redeem(kassa, ACCOUNT, 5, "old/redeem")
    kassa.clock.advance(days=DAYS_BETWEEN)
    for n in range(NEW_PURCHASES):
        earn(kassa, ACCOUNT, 20 + n, f"new/{n}")
    before = pages(kassa, ACCOUNT)
    deadline = time.monotonic() + COMPACTION_WAIT_S_MAX
    while forgotten(kassa) < OLD_REQUESTS and time.monotonic() < deadline:
        time.sleep(POLL_S)

    archived = kassa.run_cli("archive", "--older-than-days", str(DAYS_BETWEEN // 2), "--config", str(kassa.config_path()))
    after = pages(kassa, ACCOUNT)
    with pytest.raises(grpc.RpcError) as too_old:
        kassa.processing.Accrue(processing_pb2.AccrueRequest(
            request_id="old/3", customer=by_account(ACCOUNT), receipt=receipt(line(1, 13 * 20), receipt_no="old/3"),
            occurred_at=timestamp_pb2.Timestamp(seconds=T0_MS // 1000)))
    undone = rollback(kassa, "undo/old/2", transaction_id=old[2].transaction_id)
    with_rollback = pages(kassa, ACCOUNT)
    verified = kassa.run_cli("verify", "--config", str(kassa.config_path()))

    assert forgotten(kassa) >= OLD_REQUESTS
    assert archived.returncode == 0, archived.stderr
    assert json.loads(archived.stdout.strip().splitlines()[-1])["entries"] == OLD_REQUESTS
    assert after == before
    assert len(after) == len(set(after)) == OLD_REQUESTS + NEW_PURCHASES
    assert too_old.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "older than the return window" in too_old.value.details()
    assert undone.reversed_transaction_id == old[2].transaction_id
    assert undone.clawed_back_points == old[2].calculation.earned_points
    assert len(with_rollback) == len(after) + 1
    assert verified.returncode == 0, verified.stdout


def test_a_return_of_a_purchase_archived_past_the_replay_window_then_its_record_forgotten(start_kassa):
    kassa = start_kassa(env=WINDOWS)
    open_account(kassa, ACCOUNT)
    bought = kassa.processing.Accrue(processing_pb2.AccrueRequest(
        request_id="buy/1", customer=by_account(ACCOUNT),
        receipt=receipt(line(1, 10_000), line(2, 30_000, qty_milli=3_000), receipt_no="buy/1")))
    kassa.clock.advance(seconds=DAY_S * 3 // 2)  # past the replay window, inside the return window
    wait_for(dropped, 2, kassa)  # the account's creation and the purchase
    archived = kassa.run_cli("archive", "--older-than-days", "0", "--config", str(kassa.config_path()))

    returned = rollback(kassa, "return/1", original_request_id="buy/1", returns=[(2, 1_000)])
    verified = kassa.run_cli("verify", "--config", str(kassa.config_path()))
    kassa.clock.advance(days=3)  # every window of every request passed
    wait_for(forgotten, 3, kassa)  # the creation, the purchase, the return

    assert archived.returncode == 0, archived.stderr
    assert json.loads(archived.stdout.strip().splitlines()[-1])["entries"] == 2
    assert returned.reversed_transaction_id == bought.transaction_id
    assert 0 < returned.clawed_back_points < bought.calculation.earned_points
    assert verified.returncode == 0, verified.stdout
    assert entries(kassa, b"idempotency") == 0
    assert entries(kassa, b"aging") == 0
    assert kassa.run_cli("verify", "--config", str(kassa.config_path())).returncode == 0
