"""A customer's purchase from end to end, the statement, redeem limits and the points' lifetime."""

from __future__ import annotations

import grpc

from kassa.v1 import accounts_pb2, processing_pb2
from tests.kassa_harness import DAY_MS, T0_MS
from tests.server.helpers import (
    LIFETIME_DAYS, accrue, expiry_ms, balance, by_account, by_card, earn, line, open_account, receipt, redeem, refused,
    snapshot, statement,
)

# A basket under the sample program: dairy gets 10 % off, then everything earns 5 %, pharmacy 3 % more.
BASKET = receipt(
    line(1, 10_000, qty_milli=2_000, category="grocery/dairy/milk"),  # 200.00, 20.00 off, earns 5 % of 180.00
    line(2, 30_000, category="pharmacy/vitamins"),  # 300.00, earns 5 % + 3 %
    line(3, 4_000, qty_milli=1_500, category="grocery/bakery"),  # 60.00, earns 5 %
    receipt_no="R-1881",
    store_id="store-7",
)
BASKET_EARNED_BY_LINE = [900, 2_400, 300]


class TestFullPurchase:
    def test_calculate_previews_the_basket_without_changing_anything(self, kassa):
        open_account(kassa, "A-100", card="C-100")
        before = snapshot(kassa, "A-100")

        reply = kassa.processing.Calculate(processing_pb2.CalculateRequest(customer=by_card("C-100"), receipt=BASKET))

        calc = reply.calculation
        assert reply.account_id == "A-100"
        assert (calc.total_minor, calc.discount_minor, calc.payable_minor) == (56_000, 2_000, 54_000)
        assert [result.earned_points for result in calc.lines] == BASKET_EARNED_BY_LINE
        assert calc.earned_points == sum(BASKET_EARNED_BY_LINE)
        assert calc.redeemable_points == 0  # nothing to redeem yet
        assert {c.campaign_id for c in calc.campaigns} == {"base-5pct", "pharmacy-cashback", "dairy-discount"}
        assert snapshot(kassa, "A-100") == before

    def test_accrue_earns_the_calculated_points_and_the_statement_shows_them(self, kassa):
        open_account(kassa, "A-100", card="C-100")
        preview = kassa.processing.Calculate(processing_pb2.CalculateRequest(customer=by_card("C-100"), receipt=BASKET))

        reply = kassa.processing.Accrue(
            processing_pb2.AccrueRequest(request_id="store-7/term-1/R-1881", customer=by_card("C-100"), receipt=BASKET)
        )

        assert reply.account_id == "A-100"
        assert reply.transaction_id > 0
        assert reply.calculation == preview.calculation
        assert reply.balance.active_points == 3_600

        shown = kassa.accounts.GetBalance(accounts_pb2.GetBalanceRequest(customer=by_card("C-100")))
        assert shown.account_id == "A-100"
        assert shown.balance.active_points == 3_600
        assert shown.balance.available_points == 3_600
        assert (shown.balance.pending_points, shown.balance.held_points, shown.balance.debt_points) == (0, 0, 0)
        assert shown.balance.next_expiry_at.ToMilliseconds() == expiry_ms(T0_MS)
        assert shown.balance.next_expiry_points == 3_600

        newest, *older = statement(kassa, "A-100")
        assert newest.transaction_id == reply.transaction_id
        assert newest.kind == accounts_pb2.TRANSACTION_KIND_ACCRUE
        assert newest.request_id == "store-7/term-1/R-1881"
        assert newest.earned_points == 3_600
        assert newest.total_minor == 56_000
        assert (newest.store_id, newest.receipt_no) == ("store-7", "R-1881")
        assert newest.created_at.ToMilliseconds() == T0_MS
        assert [t.kind for t in older] == [
            accounts_pb2.TRANSACTION_KIND_ISSUE_CARD,
            accounts_pb2.TRANSACTION_KIND_CREATE_ACCOUNT,
        ]

    def test_statement_pages_cover_every_transaction_once_newest_first(self, kassa):
        open_account(kassa, "A-200", card="C-200")
        for number in range(5):
            earn(kassa, "A-200", 100 + number, request_id=f"buy-{number}")
        everything = kassa.accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(customer=by_account("A-200")))
        assert len(everything.transactions) == 7  # account, card, 5 purchases
        assert everything.next_page_token == ""

        pages, token = [], ""
        while True:
            page = kassa.accounts.ListTransactions(
                accounts_pb2.ListTransactionsRequest(customer=by_account("A-200"), page_size=3, page_token=token)
            )
            pages.append(list(page.transactions))
            token = page.next_page_token
            if not token:
                break

        assert [len(page) for page in pages] == [3, 3, 1]
        paged = [t for page in pages for t in page]
        assert paged == list(everything.transactions)
        ids = [t.transaction_id for t in paged]
        assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
        assert [t.earned_points for t in paged[:5]] == [104, 103, 102, 101, 100]


class TestRedeemLimits:
    def test_redeem_beyond_available_points_is_refused_and_changes_nothing(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem(kassa, "A-1", 1_001, request_id="spend-1")

        assert snapshot(kassa, "A-1") == before
        assert balance(kassa, "A-1").available_points == 1_000

    def test_redeem_above_half_of_the_receipt_is_refused(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        before = snapshot(kassa, "A-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "REDEEM_SHARE_EXCEEDED"):
            redeem(kassa, "A-1", 501, request_id="spend-1", receipt_total_minor=1_000)
        assert snapshot(kassa, "A-1") == before

        reply = redeem(kassa, "A-1", 500, request_id="spend-2", receipt_total_minor=1_000)
        assert reply.redeemed_points == 500
        assert reply.balance.available_points == 500


class TestPointsLifetime:
    def test_points_stay_active_until_their_lifetime_ends_without_any_sweep(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")

        kassa.clock.advance(days=LIFETIME_DAYS - 1)
        assert balance(kassa, "A-1").active_points == 1_000

        kassa.clock.advance(days=2)
        expired = balance(kassa, "A-1")
        assert expired.active_points == 0
        assert expired.available_points == 0
        assert not expired.HasField("next_expiry_at")
        assert expired.next_expiry_points == 0

    def test_redeem_of_expired_points_is_refused(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        kassa.clock.advance(days=LIFETIME_DAYS + 1)

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem(kassa, "A-1", 1, request_id="spend-1")

    def test_refused_redeem_leaves_expired_points_expired(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 1_000, request_id="buy-1")
        kassa.clock.advance(days=LIFETIME_DAYS + 1)
        with refused(grpc.StatusCode.FAILED_PRECONDITION):
            redeem(kassa, "A-1", 1, request_id="spend-1")

        after = balance(kassa, "A-1")
        assert (after.active_points, after.available_points) == (0, 0)
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS"):
            redeem(kassa, "A-1", 1_000, request_id="spend-2")
