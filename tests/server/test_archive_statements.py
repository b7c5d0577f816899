"""Through a real server: `kassa archive` runs while it serves; ListTransactions then pages across
the archive boundary and returns every entry once, as before; a retry of an archived purchase
is answered byte for byte as the first time; a Rollback of an archived transaction is refused
FAILED_PRECONDITION, never applied and never an internal error.
"""

from __future__ import annotations

import json

import grpc
import pytest

from kassa.v1 import accounts_pb2, processing_pb2
from tests.server.helpers import by_account, earn, line, open_account, receipt, redeem, rollback

ACCOUNT = "ARCH-1"
OLD_PURCHASES = 8
NEW_PURCHASES = 5
PAGE_SIZE = 3  # pages that start on both sides of the boundary and one that crosses it
DAYS_BETWEEN = 10


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


def test_statements_retries_and_rollbacks_across_the_archive_boundary(kassa):
    open_account(kassa, ACCOUNT)
    old = [earn(kassa, ACCOUNT, 10 + n, f"old/{n}") for n in range(OLD_PURCHASES)]
    redeem(kassa, ACCOUNT, 5, "old/redeem")
    kassa.clock.advance(days=DAYS_BETWEEN)
    for n in range(NEW_PURCHASES):
        earn(kassa, ACCOUNT, 20 + n, f"new/{n}")
    before = pages(kassa, ACCOUNT)

    archived = kassa.run_cli("archive", "--older-than-days", str(DAYS_BETWEEN // 2), "--config", str(kassa.config_path()))
    after = pages(kassa, ACCOUNT)
    retried = kassa.processing.Accrue(processing_pb2.AccrueRequest(
        request_id="old/3", customer=by_account(ACCOUNT), receipt=receipt(line(1, 13 * 20), receipt_no="old/3")))
    with pytest.raises(grpc.RpcError) as refusal:
        rollback(kassa, "undo/old/2", transaction_id=old[2].transaction_id)
    verified = kassa.run_cli("verify", "--config", str(kassa.config_path()))

    assert archived.returncode == 0, archived.stderr
    assert json.loads(archived.stdout.strip().splitlines()[-1])["entries"] == 1 + OLD_PURCHASES + 1
    assert after == before
    assert len(after) == len(set(after)) == 1 + OLD_PURCHASES + 1 + NEW_PURCHASES
    assert retried.SerializeToString(deterministic=True) == old[3].SerializeToString(deterministic=True)
    assert refusal.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "archived" in refusal.value.details()
    assert verified.returncode == 0, verified.stdout
