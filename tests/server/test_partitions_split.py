"""`kassa partitions split`: a ledger served at P = 1 split to 2, then to 4, against real servers. For
every account its balance, its statement page by page, and the answer to every request made before
(replayed) are the same bytes before and after; `kassa verify` passes after each split; a rollback by
transaction id of an entry made before finds it in its new partition; the split is refused while a
server holds the ledger.
"""

from __future__ import annotations

import json

import pytest

from kassa.core_ext.partitions import PARTITION_SHIFT_BITS, home_partition
from kassa.v1 import accounts_pb2, admin_pb2, processing_pb2
from tests.reliability import CALL_TIMEOUT_S, assert_verifies, purchase
from tests.server import test_partitions as shared
from tests.server.helpers import balance, by_account, by_card
from tests.server.test_partitions_join import create, join
from tests.server.test_process_event import customer_event

ACCOUNTS = [f"SPLIT-{number}" for number in range(8)]
STATEMENT_PAGE_SIZE = 3  # entries a page: several pages an account


def populate(server) -> list:
    """Accounts with cards and a phone, purchases, a redeem, rollbacks, a referral and a group; returns
    [(stub method name, request)] of every request made."""
    sent = []

    def send(service, method: str, request):
        getattr(getattr(server, service), method)(request, timeout=CALL_TIMEOUT_S)
        sent.append((service, method, request))

    for number, account_id in enumerate(ACCOUNTS):
        create(server, account_id, phone=f"+4900{number}", card=f"CARD-{account_id}")
        sent.append(("accounts", "CreateAccount", accounts_pb2.CreateAccountRequest(
            request_id=f"create/{account_id}", account_id=account_id, phone=f"+4900{number}")))
    for number, account_id in enumerate(ACCOUNTS[1:]):
        send("processing", "Accrue", purchase(account_id, f"buy/{account_id}/1", 100 + number))
        send("processing", "Accrue", purchase(account_id, f"buy/{account_id}/2", 50, redeem_points=20))
    send("processing", "Rollback", processing_pb2.RollbackRequest(
        request_id="undo/1", original_request_id=f"buy/{ACCOUNTS[1]}/1"))
    send("processing", "ProcessEvent", processing_pb2.ProcessEventRequest(
        request_id="ref/1", event=customer_event(ACCOUNTS[2], "referral", related=by_account(ACCOUNTS[3]))))
    send("accounts", "JoinGroup", accounts_pb2.JoinGroupRequest(
        request_id="join/1", account_id=ACCOUNTS[0], parent_account_id=ACCOUNTS[4]))
    return sent


def snapshot(server, sent: list) -> dict:
    """Every account's balance (by card) and statement pages, and every request's answer replayed."""
    seen = {}
    for account_id in ACCOUNTS:
        seen[f"balance {account_id}"] = server.accounts.GetBalance(accounts_pb2.GetBalanceRequest(
            customer=by_card(f"CARD-{account_id}")), timeout=CALL_TIMEOUT_S).SerializeToString(deterministic=True)
        token, page_no = "", 0
        while True:
            page = server.accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(
                customer=by_account(account_id), page_size=STATEMENT_PAGE_SIZE, page_token=token),
                timeout=CALL_TIMEOUT_S)
            seen[f"statement {account_id} {page_no}"] = page.SerializeToString(deterministic=True)
            token, page_no = page.next_page_token, page_no + 1
            if not token:
                break
    for service, method, request in sent:
        reply = getattr(getattr(server, service), method)(request, timeout=CALL_TIMEOUT_S)
        seen[f"{method} {request.request_id}"] = reply.SerializeToString(deterministic=True)
    return seen


def split_to(server, partitions: int) -> dict:
    done = server.run_cli("partitions", "split", "--config", str(server.config_path()), "--to", str(partitions))
    assert done.returncode == 0, done.stderr
    server.extra_env["KASSA_LEDGER_PARTITIONS"] = str(partitions)
    return json.loads(done.stdout)


def test_a_split_changes_nothing_any_account_shows(start_kassa):
    server = start_kassa()
    sent = populate(server)
    before = snapshot(server, sent)
    refused = server.run_cli("partitions", "split", "--config", str(server.config_path()), "--to", "2")
    server.stop()

    split_to(server, 2)
    server.start()
    after_two = snapshot(server, sent)
    summary_two = assert_verifies(server)
    # An entry made at P = 1 (ids of partition 0) whose account went to partition 1: its rollback finds it.
    moved = next(a for a in ACCOUNTS[2:] if a != ACCOUNTS[4] and home_partition(a, 2) == 1)
    probe = server.processing.Accrue(purchase(moved, f"probe/{moved}", 10), timeout=CALL_TIMEOUT_S)
    undo = server.processing.Rollback(processing_pb2.RollbackRequest(
        request_id="undo/moved", transaction_id=_first_purchase_id(before, moved)), timeout=CALL_TIMEOUT_S)
    sent.append(("processing", "Rollback", processing_pb2.RollbackRequest(
        request_id="undo/moved", transaction_id=_first_purchase_id(before, moved))))
    baseline = snapshot(server, sent)
    server.stop()
    split_to(server, 4)
    server.start()
    after_four = snapshot(server, sent)

    assert refused.returncode == 2
    assert "in use" in refused.stderr
    assert after_two == before
    assert summary_two["partitions"] == 2
    assert probe.transaction_id >> PARTITION_SHIFT_BITS == 1
    assert _first_purchase_id(before, moved) >> PARTITION_SHIFT_BITS == 0
    assert undo.reversed_transaction_id == _first_purchase_id(before, moved)
    assert after_four == baseline
    assert assert_verifies(server)["partitions"] == 4


def _first_purchase_id(seen: dict, account_id: str) -> int:
    reply = processing_pb2.AccrueResponse.FromString(seen[f"Accrue buy/{account_id}/1"])
    return reply.transaction_id


@pytest.mark.parametrize("partitions_from, partitions_to", [(1, 2), (2, 4)], ids=["1-to-2", "2-to-4"])
def test_a_split_re_splits_the_escrow_and_the_budget_is_still_granted_exactly(start_kassa, tmp_path,
                                                                               partitions_from, partitions_to):
    """A budget of 1,000 and a code's 100 uses part spent; after the split, purchases in every
    partition until none gets anything grant exactly the rest: 1,000 and 100 in all. (At P = 1 the
    caps come from the rule files and the code's record; at P = 2 from the bank.)"""
    server = shared.start_partitioned(start_kassa, tmp_path, partitions_from)
    accounts = shared.spread_accounts("ESC", partitions_to, 8)
    for account_id in accounts:
        create(server, account_id)
    server.admin.ImportPromoCodes(admin_pb2.ImportPromoCodesRequest(
        request_id="codes-1", campaign_id="promo-5", codes=[shared.CODE], uses_total=shared.CODE_USES))
    first = [server.processing.Accrue(shared.purchase(a), timeout=CALL_TIMEOUT_S) for a in accounts * 3]
    before = {a: balance(server, a).SerializeToString(deterministic=True) for a in accounts}
    server.stop()

    split_to(server, partitions_to)
    server.start()
    after = {a: balance(server, a).SerializeToString(deterministic=True) for a in accounts}
    assert_verifies(server)
    rest = shared.drain(server, accounts)

    assert after == before
    assert sum(shared.granted(r, "budget-7") for r in first + rest) == shared.BUDGET_POINTS
    assert sum(shared.granted(r, "promo-5") for r in first + rest) == shared.CODE_USES * 5
    assert assert_verifies(server)["partitions"] == partitions_to
