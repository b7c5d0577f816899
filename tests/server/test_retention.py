"""Retention windows and compaction (DESIGN §4 Lifecycle, issue 20) through a real server.

The windows keep their defaults (replay 7 days, return 90 days); the tests move the server's
clock past them and let the server's own compaction chore (every COMPACTION_INTERVAL_S) run.
"""

from __future__ import annotations

import json
import os
import time

import grpc
import lmdb
import pytest

from kassa.core_ext.compaction import REMOVED_CODE
from kassa.core_ext.retention import OCCURRED_AT_AHEAD_MAX_S
from kassa.v1 import admin_pb2, common_pb2, processing_pb2
from tests.kassa_harness import DAY_MS, T0_MS
from tests.server.helpers import (
    accrue, balance, by_account, earn, line, open_account, receipt, redeem, refused, rollback, snapshot,
)
from tests.server.test_verify_cli import assert_verifies

COMPACTION_INTERVAL_S = 0.2  # seconds between the server's compaction runs in these tests
COMPACTION_WAIT_S = 20  # seconds a test waits for the runs it needs
REPLAY_WINDOW_DAYS = 7  # the default ledger.replay_window_s
RETURN_WINDOW_DAYS = 90  # the default ledger.return_window_s
PURCHASE = receipt(line(1, 12_000, qty_milli=2_000), line(2, 30_000), receipt_no="R-9")


@pytest.fixture
def shop(start_kassa):
    """A server that compacts (and sweeps expiry) every COMPACTION_INTERVAL_S."""
    return start_kassa(env={"KASSA_LEDGER_COMPACTION_INTERVAL_S": str(COMPACTION_INTERVAL_S),
                            "KASSA_PROCESSING_EXPIRY_SWEEP_INTERVAL_S": str(COMPACTION_INTERVAL_S)})


def compactions(server) -> list[dict]:
    return [json.loads(text) for text in list(server.log_lines) if '"msg":"compaction"' in text]


def compact_now(server, runs: int = 2) -> None:
    """Wait for `runs` compaction runs that began after this call: the last saw the clock as it is."""
    seen = len(compactions(server))
    deadline = time.monotonic() + COMPACTION_WAIT_S
    while len(compactions(server)) < seen + runs:
        assert time.monotonic() < deadline, "no compaction ran:\n" + "".join(server.log_lines[-20:])
        time.sleep(COMPACTION_INTERVAL_S / 2)


def wire(message) -> bytes:
    return message.SerializeToString(deterministic=True)


def made_at(ms: int) -> dict:
    stamp = processing_pb2.AccrueRequest().occurred_at
    stamp.FromMilliseconds(ms)
    return {"occurred_at": stamp}


class TestReplayWindow:
    def test_a_retry_inside_the_replay_window_replays_byte_for_byte(self, shop):
        open_account(shop, "A-1")
        first = accrue(shop, "A-1", PURCHASE, request_id="store-1/term-1/R-9")
        shop.clock.advance(days=REPLAY_WINDOW_DAYS - 1)
        compact_now(shop)

        again = accrue(shop, "A-1", PURCHASE, request_id="store-1/term-1/R-9")

        assert wire(again) == wire(first)

    def test_past_the_replay_window_the_answer_is_dropped_and_a_retry_refused_not_reapplied(self, shop):
        open_account(shop, "A-1")
        first = accrue(shop, "A-1", PURCHASE, request_id="store-1/term-1/R-9")
        shop.clock.advance(days=REPLAY_WINDOW_DAYS + 1)
        compact_now(shop)
        before = snapshot(shop, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ANSWER_NOT_KEPT") as refusal:
            accrue(shop, "A-1", PURCHASE, request_id="store-1/term-1/R-9")

        assert "store-1/term-1/R-9" in refusal.details
        assert f"transaction {first.transaction_id}" in refusal.details
        assert snapshot(shop, "A-1") == before
        assert sum(run["answers_dropped"] for run in compactions(shop)) >= 2  # the account's and the purchase's

    def test_a_refusal_past_the_replay_window_is_not_flipped_by_its_retry(self, shop):
        open_account(shop, "A-1")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem(shop, "A-1", 500, request_id="spend-1")
        earn(shop, "A-1", 1_000, request_id="buy-1")  # now 500 would be covered
        shop.clock.advance(days=REPLAY_WINDOW_DAYS + 1)
        compact_now(shop)

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ANSWER_NOT_KEPT"):
            redeem(shop, "A-1", 500, request_id="spend-1")

        assert balance(shop, "A-1").available_points == 1_000

    def test_a_return_by_original_request_id_works_after_the_answer_was_dropped(self, shop):
        open_account(shop, "A-1")
        first = accrue(shop, "A-1", PURCHASE, request_id="store-1/term-1/R-9")
        earned = first.calculation.earned_points
        shop.clock.advance(days=REPLAY_WINDOW_DAYS + 1)
        compact_now(shop)
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ANSWER_NOT_KEPT"):
            accrue(shop, "A-1", PURCHASE, request_id="store-1/term-1/R-9")

        returned = rollback(shop, "return-1", original_request_id="store-1/term-1/R-9", returns=[(2, 1_000)])

        assert returned.reversed_transaction_id == first.transaction_id
        assert 0 < returned.clawed_back_points < earned
        assert balance(shop, "A-1").active_points == earned - returned.clawed_back_points


class TestArchivePastTheReplayWindow:
    def test_the_servers_archive_takes_a_purchase_a_replay_window_later_and_it_can_still_be_returned(self, start_kassa):
        """The default windows and period: a week after a purchase its entry is in the archive, its
        record retained; a return by original_request_id reads it there, and verify passes."""
        server = start_kassa(env={"KASSA_LEDGER_COMPACTION_INTERVAL_S": str(COMPACTION_INTERVAL_S),
                                  "KASSA_LEDGER_ARCHIVE_INTERVAL_S": str(COMPACTION_INTERVAL_S)})
        open_account(server, "A-1")
        first = accrue(server, "A-1", PURCHASE, request_id="store-1/term-1/R-9")
        server.clock.advance(days=REPLAY_WINDOW_DAYS, seconds=60)
        compact_now(server)
        archived = archived_below(server)

        returned = rollback(server, "return-1", original_request_id="store-1/term-1/R-9", returns=[(2, 1_000)])

        assert archived > first.transaction_id
        assert returned.reversed_transaction_id == first.transaction_id
        assert 0 < returned.clawed_back_points < first.calculation.earned_points
        assert assert_verifies(server)["archived_below_txn_id"] == archived


def archived_below(server) -> int:
    """Wait for the server's archive chore to have moved the boundary; the boundary."""
    deadline = time.monotonic() + COMPACTION_WAIT_S
    while True:
        runs = [json.loads(text) for text in list(server.log_lines) if '"msg":"journal archived"' in text]
        below = max((run.get("archived_below_txn_id", 0) for run in runs), default=0)
        if below:
            return below
        assert time.monotonic() < deadline, "no archive run moved the boundary:\n" + "".join(server.log_lines[-20:])
        time.sleep(COMPACTION_INTERVAL_S / 2)


class TestVeryLateRequests:
    def test_a_request_older_than_the_return_window_is_not_applied_twice(self, shop):
        open_account(shop, "A-1")
        first = accrue(shop, "A-1", PURCHASE, request_id="store-1/term-1/R-9", **made_at(T0_MS))
        shop.clock.advance(days=RETURN_WINDOW_DAYS, seconds=OCCURRED_AT_AHEAD_MAX_S + 60)
        compact_now(shop)
        assert sum(run["requests_forgotten"] for run in compactions(shop)) >= 2  # forgotten: only its time tells
        before = snapshot(shop, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_TOO_OLD") as refusal:
            accrue(shop, "A-1", PURCHASE, request_id="store-1/term-1/R-9", **made_at(T0_MS))

        assert "store-1/term-1/R-9" in refusal.details
        assert snapshot(shop, "A-1") == before
        assert balance(shop, "A-1").active_points == first.calculation.earned_points

    def test_a_request_made_inside_the_window_is_applied_with_its_occurred_at(self, kassa):
        open_account(kassa, "A-1")
        kassa.clock.advance(days=3)

        made = accrue(kassa, "A-1", PURCHASE, request_id="offline-1", **made_at(T0_MS))

        assert made.calculation.earned_points > 0
        assert wire(accrue(kassa, "A-1", PURCHASE, request_id="offline-1", **made_at(T0_MS))) == wire(made)

    def test_a_retry_stamped_anew_is_the_same_payload_for_every_operation(self, kassa):
        """occurred_at is when the POS made the request, not what it asks for: a Redeem retried with
        another stamp replays, as an Accrue does (one digest scheme)."""
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 500, "fill")
        spend = dict(request_id="spend-9", customer=by_account("A-1"), points=100, receipt_total_minor=10**9,
                     mode=processing_pb2.REDEEM_MODE_IMMEDIATE)
        first = kassa.processing.Redeem(processing_pb2.RedeemRequest(**spend, **made_at(T0_MS)))
        kassa.clock.advance(seconds=60)

        again = kassa.processing.Redeem(processing_pb2.RedeemRequest(**spend, **made_at(T0_MS + 60_000)))

        assert wire(again) == wire(first)
        assert balance(kassa, "A-1").active_points == 400

    def test_an_occurred_at_far_ahead_of_the_server_is_invalid(self, kassa):
        open_account(kassa, "A-1")
        ahead_ms = T0_MS + (OCCURRED_AT_AHEAD_MAX_S + 60) * 1000
        with refused(grpc.StatusCode.INVALID_ARGUMENT) as refusal:
            accrue(kassa, "A-1", PURCHASE, request_id="ahead-1", **made_at(ahead_ms))
        assert refusal.details.startswith("occurred_at:")


def _pages(env, name: bytes) -> int:
    with env.begin() as txn:
        stat = txn.stat(env.open_db(name, txn=txn, create=False))
    return stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]


class TestCompaction:
    def test_compaction_removes_what_ended_and_verify_passes(self, shop):
        open_account(shop, "A-1")
        open_account(shop, "A-2")
        bought = earn(shop, "A-1", 1_000, request_id="buy-1")
        spent = redeem(shop, "A-1", 400, request_id="spend-1")  # spends part of the lot
        redeem(shop, "A-1", 100, request_id="hold-1", hold=True)  # a hold that will expire
        rollback(shop, "rb-early", original_request_id="never-arrived")  # a tombstone
        earn(shop, "A-2", 50, request_id="buy-2")
        before = assert_verifies(shop)
        assert before["lots"] == 2
        assert before["holds"] == 1

        shop.clock.advance(days=400)  # the lots' 365 days passed: they expire; every window passed
        compact_now(shop, runs=3)

        after = assert_verifies(shop)
        assert after["lots"] == 0
        assert after["holds"] == 0
        assert after["idempotency"] == 0
        assert after["retained"] == 0
        assert after["journal"] > before["journal"]  # the journal stays (the archive's, not compaction's)
        # Rollbacks by transaction id still work on the lots compaction removed: their points expired.
        restored = rollback(shop, "cancel-spend", transaction_id=spent.transaction_id)
        assert restored.restored_points == 0
        cancelled = rollback(shop, "cancel-buy", transaction_id=bought.transaction_id)
        assert cancelled.taken_points == 0
        assert_verifies(shop)

    def test_after_compaction_the_file_grows_by_the_journal_only(self, shop):
        """Write, compact, write as much again: outside the journal (which the archive takes out),
        the second round reuses the pages the first left free."""
        for index in range(ACCOUNTS):
            open_account(shop, f"A-{index}")
        data_file = shop.ledger_path / "data.mdb"
        env = lmdb.open(str(shop.ledger_path), readonly=True, lock=True, max_dbs=16, subdir=True)
        try:
            grown = []
            for day in range(ROUNDS):
                size, journal = os.path.getsize(data_file), _pages(env, b"journal")
                _buy(shop, day)
                grown.append((os.path.getsize(data_file) - size) // PAGE_BYTES - (_pages(env, b"journal") - journal))
                shop.clock.advance(days=RETURN_WINDOW_DAYS + 1)
                compact_now(shop)
        finally:
            env.close()
        first, *later = grown
        assert first > 50, grown  # pages outside the journal the first round took
        assert max(later) <= first // 4, grown


ACCOUNTS = 20
ROUNDS = 3
PURCHASES_PER_ROUND = 2_000
BATCH_OPERATIONS = 500
PAGE_BYTES = 4096


def _buy(server, day: int) -> None:
    for first in range(0, PURCHASES_PER_ROUND, BATCH_OPERATIONS):
        operations = [
            processing_pb2.Operation(accrue=processing_pb2.AccrueRequest(
                request_id=f"store-1/term-1/day-{day}/receipt-{index:06d}",
                customer=by_account(f"A-{index % ACCOUNTS}"),
                receipt=receipt(line(1, 1_000 + index), receipt_no=f"R-{index}")))
            for index in range(first, first + BATCH_OPERATIONS)
        ]
        results = server.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=operations)).results
        assert all(result.WhichOneof("result") == "accrue" for result in results)


LIMITED_PROGRAM = """
[program]
name = "codes and counters that end"
points_lifetime_days = 365
"""
LIMITED_CAMPAIGNS = """
[[campaigns]]
id = "day-30"
when = { category_prefixes = ["daily/"] }
effect = { kind = "earn_fixed", points = 30 }
limits = { account_day_max_points = 100 }

[[campaigns]]
id = "promo-500"
promo_code = true
when = { category_prefixes = ["promo/"] }
effect = { kind = "earn_fixed", points = 500 }
"""
CODE = "SPRING-1"
CODE_VALID_DAYS = 10
CODED_PURCHASE = common_pb2.Receipt(
    store_id="store-1", terminal_id="term-1", receipt_no="R-1",
    lines=[line(1, 1_000, category="daily/x"), line(2, 1_000, category="promo/x")], promo_codes=[CODE])


def _counters_and_code(server) -> tuple[list[bytes], bytes | None]:
    """The counters' keys and the code's stored value, read beside the running server."""
    env = lmdb.open(str(server.ledger_path), readonly=True, lock=True, max_dbs=16, subdir=True)
    try:
        with env.begin() as txn:
            counters = [key for key, _ in txn.cursor(db=env.open_db(b"counters", txn=txn, create=False))]
            code = txn.get(CODE.encode(), db=env.open_db(b"codes", txn=txn, create=False))
    finally:
        env.close()
    return counters, code


def _import_code(server, request_id: str, **validity) -> None:
    server.admin.ImportPromoCodes(admin_pb2.ImportPromoCodesRequest(
        request_id=request_id, campaign_id="promo-500", codes=[CODE], uses_per_account=1, **validity))


class TestCodesAndCounters:
    @pytest.fixture
    def coded_shop(self, start_kassa, tmp_path):
        rules = tmp_path / "rules"
        rules.mkdir()
        (rules / "program.toml").write_text(LIMITED_PROGRAM)
        (rules / "campaigns.toml").write_text(LIMITED_CAMPAIGNS)
        return start_kassa(rules=rules, env={"KASSA_LEDGER_COMPACTION_INTERVAL_S": str(COMPACTION_INTERVAL_S)})

    def test_past_their_time_a_code_and_its_counters_leave_and_the_code_cannot_come_back(self, coded_shop):
        open_account(coded_shop, "A-1")
        valid_to = processing_pb2.AccrueRequest().occurred_at
        valid_to.FromMilliseconds(T0_MS + CODE_VALID_DAYS * DAY_MS)
        _import_code(coded_shop, "codes-1", valid_to=valid_to)
        bought = accrue(coded_shop, "A-1", CODED_PURCHASE, request_id="buy-1")
        assert [(code.accepted, code.reason) for code in bought.calculation.promo_codes] == [(True, "")]
        counters, _ = _counters_and_code(coded_shop)
        assert sorted(key[:1] for key in counters) == [b"C", b"D", b"c"]

        coded_shop.clock.advance(days=CODE_VALID_DAYS + RETURN_WINDOW_DAYS + 2)
        compact_now(coded_shop, runs=3)

        counters, code = _counters_and_code(coded_shop)
        assert counters == []
        assert code == REMOVED_CODE
        assert sum(run["codes_removed"] for run in compactions(coded_shop)) == 1
        assert sum(run["counters_removed"] for run in compactions(coded_shop)) == 3
        assert_verifies(coded_shop)
        with refused(grpc.StatusCode.ALREADY_EXISTS):
            _import_code(coded_shop, "codes-2")
        again = accrue(coded_shop, "A-1", CODED_PURCHASE, request_id="buy-2")
        assert [(code.accepted, code.reason) for code in again.calculation.promo_codes] == [(False, "expired")]

    def test_a_rollback_across_removed_counters_gives_nothing_back_to_them_and_verify_passes(self, coded_shop):
        open_account(coded_shop, "A-1")
        valid_to = processing_pb2.AccrueRequest().occurred_at
        valid_to.FromMilliseconds(T0_MS + CODE_VALID_DAYS * DAY_MS)
        _import_code(coded_shop, "codes-1", valid_to=valid_to)
        bought = accrue(coded_shop, "A-1", CODED_PURCHASE, request_id="buy-1")
        coded_shop.clock.advance(days=CODE_VALID_DAYS + RETURN_WINDOW_DAYS + 2)
        compact_now(coded_shop, runs=3)

        cancelled = rollback(coded_shop, "cancel-1", transaction_id=bought.transaction_id)

        assert cancelled.reversed_transaction_id == bought.transaction_id
        counters, _ = _counters_and_code(coded_shop)
        assert counters == []  # before, each came back below zero
        assert_verifies(coded_shop)
