"""Builders and small readers for the real-server tests: receipts, accounts, balances, statements.

Money and points are int minor units, quantities thousandths, as on the wire.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import grpc
import pytest

from kassa.v1 import accounts_pb2, common_pb2, processing_pb2

UNIT = 1000  # qty_milli of one unit
BASE_EARN_BPS = 500  # the sample program's base earn: 5 %
HOLD_TTL_S = 900  # config/kassa.toml [processing] hold_ttl_s
LIFETIME_DAYS = 365  # config/rules/program.toml points_lifetime_days


def expiry_ms(earned_at_ms: int) -> int:
    """When points earned at `earned_at_ms` expire: the UTC midnight at or after the lifetime's end."""
    end = earned_at_ms + LIFETIME_DAYS * 86_400_000
    return -(-end // 86_400_000) * 86_400_000
REASON_KEY = "kassa-reason"


def line(
    line_no: int,
    price_minor: int,
    qty_milli: int = UNIT,
    category: str = "grocery/bakery",
    sku: str = "",
    **flags,
) -> common_pb2.Line:
    """A receipt line whose amount is qty x price (floor to a minor unit), as a POS would send it."""
    return common_pb2.Line(
        line_no=line_no,
        sku=sku or f"SKU-{line_no}",
        category=category,
        qty_milli=qty_milli,
        price_minor=price_minor,
        amount_minor=qty_milli * price_minor // UNIT,
        **flags,
    )


def receipt(*lines: common_pb2.Line, receipt_no: str = "R-1", store_id: str = "store-1") -> common_pb2.Receipt:
    return common_pb2.Receipt(store_id=store_id, terminal_id="term-1", receipt_no=receipt_no, lines=list(lines))


def by_account(account_id: str) -> common_pb2.Customer:
    return common_pb2.Customer(account_id=account_id)


def by_card(card: str) -> common_pb2.Customer:
    return common_pb2.Customer(card=card)


def open_account(kassa, account_id: str, card: str = "") -> accounts_pb2.Account:
    """Create an account (and issue it a card when `card` is given)."""
    reply = kassa.accounts.CreateAccount(
        accounts_pb2.CreateAccountRequest(request_id=f"create/{account_id}", account_id=account_id)
    )
    if not card:
        return reply.account
    return kassa.accounts.IssueCard(
        accounts_pb2.IssueCardRequest(request_id=f"card/{card}", account_id=account_id, card=card)
    ).account


def accrue(kassa, account_id: str, the_receipt: common_pb2.Receipt, request_id: str, **fields):
    return kassa.processing.Accrue(
        processing_pb2.AccrueRequest(request_id=request_id, customer=by_account(account_id), receipt=the_receipt, **fields)
    )


def earn(kassa, account_id: str, points: int, request_id: str) -> processing_pb2.AccrueResponse:
    """Give the account exactly `points` (< 15,000.00) by a one-line purchase at the base 5 % rate."""
    assert points * 20 < 300_000, "stay below the big-basket bonus"
    reply = accrue(kassa, account_id, receipt(line(1, points * 20), receipt_no=request_id), request_id)
    assert reply.calculation.earned_points == points
    return reply


def redeem(kassa, account_id: str, points: int, request_id: str, receipt_total_minor: int = 10**9, hold=False):
    mode = processing_pb2.REDEEM_MODE_HOLD if hold else processing_pb2.REDEEM_MODE_IMMEDIATE
    return kassa.processing.Redeem(
        processing_pb2.RedeemRequest(
            request_id=request_id,
            customer=by_account(account_id),
            points=points,
            receipt_total_minor=receipt_total_minor,
            mode=mode,
        )
    )


def rollback(kassa, request_id: str, transaction_id: int = 0, original_request_id: str = "", returns=()):
    """Rollback a transaction; `returns` is [(line_no, qty_milli), ...] for a partial return."""
    target = {"transaction_id": transaction_id} if transaction_id else {"original_request_id": original_request_id}
    return kassa.processing.Rollback(
        processing_pb2.RollbackRequest(
            request_id=request_id,
            return_lines=[processing_pb2.ReturnLine(line_no=n, qty_milli=q) for n, q in returns],
            **target,
        )
    )


def balance(kassa, account_id: str) -> common_pb2.Balance:
    return kassa.accounts.GetBalance(accounts_pb2.GetBalanceRequest(customer=by_account(account_id))).balance


def statement(kassa, account_id: str) -> list[accounts_pb2.Transaction]:
    """The whole statement, newest first, read page by page."""
    transactions, token = [], ""
    while True:
        page = kassa.accounts.ListTransactions(
            accounts_pb2.ListTransactionsRequest(customer=by_account(account_id), page_size=500, page_token=token)
        )
        transactions.extend(page.transactions)
        token = page.next_page_token
        if not token:
            return transactions


def snapshot(kassa, account_id: str) -> tuple[bytes, list[bytes]]:
    """Balance and statement, serialised, to show that nothing changed."""
    return (
        balance(kassa, account_id).SerializeToString(deterministic=True),
        [t.SerializeToString(deterministic=True) for t in statement(kassa, account_id)],
    )


@dataclass
class Refusal:
    code: grpc.StatusCode | None = None
    details: str = ""
    reason: str = ""


@contextlib.contextmanager
def refused(code: grpc.StatusCode, reason: str | None = None):
    """Expect the call inside to fail with `code` (and `kassa-reason` trailing metadata `reason`)."""
    refusal = Refusal()
    with pytest.raises(grpc.RpcError) as caught:
        yield refusal
    error = caught.value
    refusal.code = error.code()
    refusal.details = error.details()
    refusal.reason = dict(error.trailing_metadata() or ()).get(REASON_KEY, "")
    assert refusal.code == code, f"expected {code.name}, got {refusal.code.name}: {refusal.details}"
    if reason is not None:
        assert refusal.reason == reason, f"expected reason {reason}, got {refusal.reason!r}: {refusal.details}"
