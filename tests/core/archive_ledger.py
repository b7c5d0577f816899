"""A real LMDB ledger with two periods of purchases, redemptions, returns and captured holds, for
the journal archive's tests: the first period (days 0-2) is the one they archive."""

from __future__ import annotations

from kassa.core_ext import Ledger, Program
from kassa.core_ext.limits import MS_PER_DAY
from kassa.core_ext.model import (
    AccrueOp, Code, CreateAccountOp, Customer, IdKind, Line, Receipt, RedeemOp, ReturnLine, RollbackOp,
)
from tests.core.programs import program

T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z
BOUNDARY_MS = T0_MS + 3 * MS_PER_DAY  # between the two periods
MAP_SIZE_BYTES = 64 * 1024**2
HOLD_TTL_S = 900
UNIT = 1000  # qty_milli of one item
ACCOUNTS = [f"A-{n}" for n in range(5)]
PURCHASES_PER_DAY = 40

CAMPAIGNS = """
[[campaigns]]
id = "base"
when = {}
effect = { kind = "earn_percent", percent_bps = 500 }
"""


def open_ledger(path) -> Ledger:
    return Ledger(str(path), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S)


def by_account(account_id: str) -> Customer:
    return Customer(IdKind.ACCOUNT, account_id)


def purchase(request_id: str, account_id: str, amount_minor: int, redeem_points: int = 0,
             capture_hold_ids: tuple[int, ...] = ()) -> AccrueOp:
    receipt = Receipt("store-1", "term-1", request_id,
                      (Line(1, "SKU-1", "grocery", UNIT, amount_minor, amount_minor),
                       Line(2, "SKU-2", "grocery", 2 * UNIT, 1_000, 2_000)))
    return AccrueOp(request_id, b"d:" + request_id.encode(), by_account(account_id), receipt, redeem_points,
                    capture_hold_ids)


def applied(ledger: Ledger, ops: list, now_ms: int) -> list:
    outcomes = ledger.apply(ops, now_ms)
    refused = [outcome for outcome in outcomes if outcome.code != Code.OK]
    assert refused == [], refused
    return outcomes


def fill(ledger: Ledger, days: range) -> None:
    """Each day: purchases round robin, a redemption, a return of one line, a hold captured by a purchase."""
    if days.start == 0:
        applied(ledger, [CreateAccountOp(f"create/{a}", b"d", a) for a in ACCOUNTS], T0_MS)
    for day in days:
        now_ms = T0_MS + day * MS_PER_DAY
        ops = [purchase(f"buy/{day}/{n}", ACCOUNTS[n % len(ACCOUNTS)], 10_000 + 100 * n)
               for n in range(PURCHASES_PER_DAY)]
        outcomes = applied(ledger, ops, now_ms)
        returned = outcomes[1].body.transaction_id
        hold = applied(ledger, [RedeemOp(f"hold/{day}", b"d", by_account(ACCOUNTS[0]), 50, 10_000, hold=True)],
                       now_ms + 1)[0].body.transaction_id
        applied(ledger, [
            RedeemOp(f"redeem/{day}", b"d", by_account(ACCOUNTS[2]), 100, 10_000),
            RollbackOp(f"return/{day}", b"d", transaction_id=returned, return_lines=(ReturnLine(2, UNIT),)),
            purchase(f"capture/{day}", ACCOUNTS[0], 5_000, capture_hold_ids=(hold,)),
        ], now_ms + 2)
