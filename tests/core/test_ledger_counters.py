"""Ledger-kept limits in process, against a real LMDB ledger in a temp directory.

Campaign budgets, per-account day caps, per-account uses and promo-code uses are counted in the
ledger's write transaction (the "counters" database) and given back by rollbacks. These tests pin:

- a campaign whose budget or cap is used up stops applying, and one that has only part of its
  amount left gives exactly that part (its lines' amounts cut in proportion);
- the same holds whether the purchases come one per write transaction or all in one;
- a partial return gives back each line's share by returned quantity, telescoping (after R of Q
  units a line has given back amount * R // Q), and the uses only when the whole purchase is back;
  a full cancel gives back everything, uses and promo-code uses included;
- a day cap is per account and per local day (the program's time zone), and a rollback gives back
  to the day the purchase was made, not to the day of the rollback;
- a single-use promo code is accepted exactly once however many purchases present it (the others
  see "exhausted"), a per-account code once per account ("limit_per_account"), and a rolled-back
  purchase makes its code usable again;
- a retried request replays its outcome and counts nothing twice;
- `Ledger.verify` (what `kassa verify` runs) finds nothing after all of this, and finds a counter
  that was written wrong behind the ledger's back.
"""

from __future__ import annotations

import pytest

from kassa.core_ext import Ledger, Program
from kassa.core_ext.model import (
    AccrueOp, Code, CreateAccountOp, Customer, EventOp, IdKind, Line, PromoCodesOp, Reason, Receipt, ReturnLine,
    RollbackOp,
)
from tests.core.programs import program

T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z = 17:00 in Tokyo
HOUR_MS = 3_600_000
TOKYO_MIDNIGHT_MS = T0_MS + 7 * HOUR_MS  # 2026-06-02T00:00 in Tokyo (UTC+9, no DST)
MAP_SIZE_BYTES = 64 * 1024**2
HOLD_TTL_S = 900
UNIT = 1000

CAMPAIGNS = """
[[campaigns]]
id = "budget"
when = { category_prefixes = ["b/"] }
effect = { kind = "earn_percent", percent_bps = 1000 }
limits = { budget_points = 100 }

[[campaigns]]
id = "daycap"
when = { category_prefixes = ["d/"] }
effect = { kind = "earn_percent", percent_bps = 1000 }
limits = { account_day_max_points = 50 }

[[campaigns]]
id = "uses"
when = { category_prefixes = ["u/"] }
effect = { kind = "earn_percent", percent_bps = 1000 }
limits = { uses_per_account = 2, budget_points = 1000 }

[[campaigns]]
id = "promo"
promo_code = true
when = { category_prefixes = ["p/"] }
effect = { kind = "earn_fixed", points = 40 }

[[campaigns]]
id = "discount-budget"
when = { category_prefixes = ["x/"] }
effect = { kind = "discount_percent", percent_bps = 1000 }
limits = { budget_minor = 300 }

[[campaigns]]
id = "signup"
trigger = "event"
when = { event_types = ["signup"] }
effect = { kind = "earn_fixed", points = 100 }
limits = { budget_points = 250 }

[[campaigns]]
id = "referral"
trigger = "event"
when = { event_types = ["referral"] }
effect = { kind = "earn_fixed", points = 100, related_points = 50 }
limits = { budget_points = 150 }
"""

ACCOUNTS = tuple(f"A{i}" for i in range(8))


def counter_bytes(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)


class Harness:
    """A ledger over the test program, with builders and raw counter reads."""

    def __init__(self, path, grouped: bool = False):
        self.ledger = Ledger(str(path), Program(program(CAMPAIGNS, timezone="Asia/Tokyo")), MAP_SIZE_BYTES, HOLD_TTL_S)
        self.grouped = grouped  # apply a wave of operations in one write transaction, or one each
        self.now = T0_MS
        self.serial = 0
        self.apply([CreateAccountOp(f"create/{a}", b"d", a) for a in ACCOUNTS])

    def close(self):
        self.ledger.close()

    def apply(self, ops: list) -> list:
        if self.grouped:
            outcomes = self.ledger.apply(ops, self.now)
        else:
            outcomes = [self.ledger.apply([op], self.now)[0] for op in ops]
        assert len(outcomes) == len(ops)
        return outcomes

    def one(self, op):
        outcome = self.ledger.apply([op], self.now)[0]
        assert outcome.code == Code.OK, outcome
        return outcome.body

    def request_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def accrue(self, account: str, *lines: tuple, codes: tuple[str, ...] = (), request_id: str = "") -> AccrueOp:
        """`lines`: (category, qty_milli, amount_minor) each."""
        request_id = request_id or self.request_id("buy")
        built = tuple(Line(i + 1, f"SKU-{i + 1}", category, qty, amount * UNIT // qty, amount)
                      for i, (category, qty, amount) in enumerate(lines))
        receipt = Receipt("store-1", "term-1", request_id, built, promo_codes=codes)
        return AccrueOp(request_id, b"d:" + request_id.encode(), Customer(IdKind.ACCOUNT, account), receipt)

    def rollback(self, txn_id: int, returns: tuple[tuple[int, int], ...] = ()) -> RollbackOp:
        request_id = self.request_id("rollback")
        return RollbackOp(request_id, b"d:" + request_id.encode(), transaction_id=txn_id,
                          return_lines=tuple(ReturnLine(n, q) for n, q in returns))

    def counter(self, key: bytes) -> int:
        txn, dbs = self.ledger.raw_transaction()
        with txn:
            stored = txn.get(key, db=dbs["counters"])
        return 0 if stored is None else int.from_bytes(stored, "big", signed=True)

    def day_key(self, campaign: str, account: str, at_ms: int) -> bytes:
        day = self.ledger.program.local_day(at_ms)
        return b"D%d:%s\0%s" % (day, campaign.encode(), account.encode())

    def verify_now(self) -> list[str]:
        return self.ledger.verify(self.now)

    def assert_sound(self):
        assert self.verify_now() == []


def gave(outcome, campaign: str) -> int:
    """What `campaign` gave on an accepted Accrue (points, or minor units off); 0 when it did not apply."""
    assert outcome.code == Code.OK, outcome
    given = [c.points + c.discount_minor for c in outcome.body.calculation.campaigns if c.campaign_id == campaign]
    assert len(given) <= 1
    return given[0] if given else 0


def applied(outcome, campaign: str) -> bool:
    return any(c.campaign_id == campaign for c in outcome.body.calculation.campaigns)


@pytest.fixture(params=[False, True], ids=["one-per-txn", "one-txn"])
def ledger(request, tmp_path):
    harness = Harness(tmp_path / "ledger", grouped=request.param)
    yield harness
    harness.close()


# ---------------------------------------------------------------------------------------------
# Budgets


def test_budget_is_spent_exactly_then_the_campaign_stops(ledger):
    # 8 accounts ask 30 points each, twice: 480 asked of a budget of 100.
    ops = [ledger.accrue(a, ("b/x", UNIT, 300)) for _ in range(2) for a in ACCOUNTS]
    outcomes = ledger.apply(ops)
    given = [gave(o, "budget") for o in outcomes]
    assert given == [30, 30, 30, 10] + [0] * 12  # in the order applied; the fourth gets what is left
    assert sum(o.body.calculation.earned_points for o in outcomes) == 100
    assert [applied(o, "budget") for o in outcomes] == [True] * 4 + [False] * 12
    assert ledger.counter(b"B:budget") == 100
    ledger.assert_sound()


def test_capped_amount_is_spread_over_the_lines_in_proportion(ledger):
    ledger.one(ledger.accrue("A0", ("b/x", UNIT, 900)))  # 90 of 100
    body = ledger.one(ledger.accrue("A1", ("b/x", UNIT, 200), ("b/y", UNIT, 100)))  # asks 20 + 10, 10 left
    assert [line.earned_points for line in body.calculation.lines] == [7, 3]  # 10 by 2:1, largest remainder
    assert body.calculation.earned_points == 10
    assert ledger.counter(b"B:budget") == 100
    ledger.assert_sound()


def test_partial_returns_give_back_the_budget_by_quantity_telescoping(ledger):
    first = ledger.one(ledger.accrue("A0", ("b/x", 3 * UNIT, 310)))  # 31 points over 3 units
    second = ledger.one(ledger.accrue("A1", ("b/x", UNIT, 690)))  # 69: the budget is spent
    assert (first.calculation.earned_points, second.calculation.earned_points) == (31, 69)
    assert ledger.counter(b"B:budget") == 100

    # One unit back: 31 * 1 // 3 = 10 points clawed and 10 of the budget free again.
    back = ledger.one(ledger.rollback(first.transaction_id, ((1, UNIT),)))
    assert back.clawed_back_points == 10
    assert ledger.counter(b"B:budget") == 90
    third = ledger.one(ledger.accrue("A2", ("b/x", UNIT, 300)))
    assert third.calculation.earned_points == 10  # exactly what came back
    assert ledger.counter(b"B:budget") == 100

    # The second unit: 31 * 2 // 3 - 10 = 10; the third: 31 - 20 = 11. All 31 are back.
    assert ledger.one(ledger.rollback(first.transaction_id, ((1, UNIT),))).clawed_back_points == 10
    assert ledger.counter(b"B:budget") == 90
    assert ledger.one(ledger.rollback(first.transaction_id, ((1, UNIT),))).clawed_back_points == 11
    assert ledger.counter(b"B:budget") == 79
    fourth = ledger.one(ledger.accrue("A3", ("b/x", UNIT, 500)))
    assert fourth.calculation.earned_points == 21
    assert ledger.counter(b"B:budget") == 100
    # Fully rolled back: nothing more to give.
    again = ledger.ledger.apply([ledger.rollback(first.transaction_id)], ledger.now)[0]
    assert (again.code, again.reason) == (Code.FAILED_PRECONDITION, Reason.ALREADY_ROLLED_BACK)
    assert ledger.counter(b"B:budget") == 100
    ledger.assert_sound()


def test_odd_quantities_add_up_to_the_whole_amount(ledger):
    # 3 lines of 7, 3 and 1.5 units; returned in uneven steps, each line's share telescopes to its total.
    body = ledger.one(ledger.accrue("A0", ("b/x", 7 * UNIT, 330), ("b/y", 3 * UNIT, 290), ("b/z", 1500, 170)))
    amounts = [line.earned_points for line in body.calculation.lines]
    assert amounts == [33, 29, 17] and ledger.counter(b"B:budget") == 79
    steps = [((1, 2 * UNIT), (2, 1000)), ((1, 1 * UNIT), (3, 500)), ((2, 2 * UNIT), (1, 3 * UNIT)),
             ((3, 1000), (1, 1 * UNIT))]
    returned = {1: 0, 2: 0, 3: 0}
    quantity = {1: 7 * UNIT, 2: 3 * UNIT, 3: 1500}
    for step in steps:
        before = {n: amounts[n - 1] * returned[n] // quantity[n] for n in returned}
        for n, q in step:
            returned[n] += q
        after = {n: amounts[n - 1] * returned[n] // quantity[n] for n in returned}
        expected_back = sum(after.values()) - sum(before.values())
        counter_before = ledger.counter(b"B:budget")
        back = ledger.one(ledger.rollback(body.transaction_id, step))
        assert back.clawed_back_points == expected_back
        assert ledger.counter(b"B:budget") == counter_before - expected_back
    assert returned == quantity
    assert ledger.counter(b"B:budget") == 0
    ledger.assert_sound()


def test_full_cancel_gives_back_the_whole_budget(ledger):
    ops = [ledger.accrue(a, ("b/x", UNIT, 300)) for a in ACCOUNTS[:4]]
    outcomes = ledger.apply(ops)
    assert [gave(o, "budget") for o in outcomes] == [30, 30, 30, 10]
    # Cancel the one that got 10 and one that got 30, in one wave: 40 come back.
    ledger.apply([ledger.rollback(outcomes[3].body.transaction_id), ledger.rollback(outcomes[0].body.transaction_id)])
    assert ledger.counter(b"B:budget") == 60
    wave = ledger.apply([ledger.accrue(a, ("b/x", UNIT, 300)) for a in ACCOUNTS])
    assert sorted((gave(o, "budget") for o in wave), reverse=True) == [30, 10] + [0] * 6
    assert ledger.counter(b"B:budget") == 100
    ledger.assert_sound()


def test_discount_budget_in_minor_units(ledger):
    # 10 % off, at most 300 off in all: 120, 120, 60, then nothing off.
    outcomes = ledger.apply([ledger.accrue(a, ("x/y", 2 * UNIT, 1200)) for a in ACCOUNTS[:4]])
    assert [gave(o, "discount-budget") for o in outcomes] == [120, 120, 60, 0]
    assert [o.body.calculation.payable_minor for o in outcomes] == [1080, 1080, 1140, 1200]
    # Returning one of the two units of the first gives back half its discount.
    ledger.one(ledger.rollback(outcomes[0].body.transaction_id, ((1, UNIT),)))
    assert ledger.counter(b"B:discount-budget") == 240
    assert gave(ledger.apply([ledger.accrue("A5", ("x/y", UNIT, 1000))])[0], "discount-budget") == 60
    ledger.assert_sound()


def test_event_budget_and_its_rollback(ledger):
    def event(account):
        request_id = ledger.request_id("event")
        return EventOp(request_id, b"d:" + request_id.encode(), Customer(IdKind.ACCOUNT, account), "signup")

    outcomes = ledger.apply([event(a) for a in ACCOUNTS])
    assert [o.body.points for o in outcomes] == [100, 100, 50] + [0] * 5
    assert ledger.counter(b"B:signup") == 250
    ledger.one(ledger.rollback(outcomes[0].body.transaction_id))
    assert ledger.counter(b"B:signup") == 150
    assert ledger.apply([event("A7")])[0].body.points == 100
    ledger.assert_sound()


def test_event_rollback_gives_back_only_what_it_takes_back(ledger):
    def referral(account):
        request_id = ledger.request_id("referral")
        return EventOp(request_id, b"d:" + request_id.encode(), Customer(IdKind.ACCOUNT, account), "referral",
                       related=Customer(IdKind.ACCOUNT, "A7"))

    first = ledger.one(referral("A0"))
    assert (first.points, first.related_points) == (100, 50)
    assert ledger.counter(b"B:referral") == 150
    undone = ledger.one(ledger.rollback(first.transaction_id))  # the event's own entry: A0's 100 points
    assert undone.clawed_back_points == 100
    # A7 keeps its 50, so 50 of the budget are still spent.
    assert ledger.counter(b"B:referral") == 50
    second = ledger.one(referral("A1"))
    held = sum(ledger.ledger.account(Customer(IdKind.ACCOUNT, a), ledger.now).body.balance.active
               for a in ("A0", "A1", "A7"))
    assert held <= 150, (second.points, second.related_points, held)


# ---------------------------------------------------------------------------------------------
# Uses per account


def test_uses_come_back_only_when_the_whole_purchase_is_rolled_back(ledger):
    two_lines = (("u/x", 2 * UNIT, 200), ("u/y", UNIT, 100))
    outcomes = ledger.apply([ledger.accrue("A0", *two_lines) for _ in range(4)])
    assert [gave(o, "uses") for o in outcomes] == [30, 30, 0, 0]  # two uses, then none
    use_key = b"U:uses\0A0"
    assert ledger.counter(use_key) == 2 and ledger.counter(b"B:uses") == 60
    # Another account has its own uses.
    assert gave(ledger.apply([ledger.accrue("A1", *two_lines)])[0], "uses") == 30
    first = outcomes[0].body.transaction_id

    # A partial return gives back the budget share but not the use.
    ledger.one(ledger.rollback(first, ((1, UNIT),)))  # half of line 1: 20 * 1 // 2 = 10
    assert ledger.counter(use_key) == 2 and ledger.counter(b"B:uses") == 80
    assert not applied(ledger.apply([ledger.accrue("A0", *two_lines)])[0], "uses")
    # The rest of it: now the purchase is back in full, and so is its use.
    ledger.one(ledger.rollback(first, ((1, UNIT), (2, UNIT))))
    assert ledger.counter(use_key) == 1 and ledger.counter(b"B:uses") == 60
    assert gave(ledger.apply([ledger.accrue("A0", *two_lines)])[0], "uses") == 30
    assert ledger.counter(use_key) == 2

    # A full cancel gives back amount and use at once.
    ledger.one(ledger.rollback(outcomes[1].body.transaction_id))
    assert ledger.counter(use_key) == 1 and ledger.counter(b"B:uses") == 60
    wave = ledger.apply([ledger.accrue("A0", *two_lines) for _ in range(3)])
    assert [gave(o, "uses") for o in wave] == [30, 0, 0]
    ledger.assert_sound()


# ---------------------------------------------------------------------------------------------
# Day caps


def test_day_cap_is_per_account_and_per_local_day(ledger):
    # 8 purchases for one account at 17:00 Tokyo time ask 30 each of a day cap of 50.
    outcomes = ledger.apply([ledger.accrue("A0", ("d/x", UNIT, 300)) for _ in range(8)])
    assert [gave(o, "daycap") for o in outcomes] == [30, 20] + [0] * 6
    day1 = ledger.day_key("daycap", "A0", ledger.now)
    assert ledger.counter(day1) == 50
    # Another account has a cap of its own.
    assert gave(ledger.apply([ledger.accrue("A1", ("d/x", UNIT, 300))])[0], "daycap") == 30

    ledger.now = TOKYO_MIDNIGHT_MS - 1  # 23:59:59.999 in Tokyo, 14:59 UTC: still the same local day
    assert not applied(ledger.apply([ledger.accrue("A0", ("d/x", UNIT, 300))])[0], "daycap")
    ledger.now = TOKYO_MIDNIGHT_MS  # a new local day (the UTC date has not changed)
    wave = ledger.apply([ledger.accrue("A0", ("d/x", UNIT, 300)) for _ in range(3)])
    assert [gave(o, "daycap") for o in wave] == [30, 20, 0]
    day2 = ledger.day_key("daycap", "A0", ledger.now)
    assert day2 != day1 and ledger.counter(day2) == 50

    # Rolling back yesterday's purchase gives back to yesterday's cap, not to today's.
    ledger.one(ledger.rollback(outcomes[0].body.transaction_id))
    assert ledger.counter(day1) == 20 and ledger.counter(day2) == 50
    assert not applied(ledger.apply([ledger.accrue("A0", ("d/x", UNIT, 300))])[0], "daycap")
    # Today's rollback gives back today's share, and the next purchase gets exactly that.
    ledger.one(ledger.rollback(wave[1].body.transaction_id))
    assert ledger.counter(day2) == 30
    assert [gave(o, "daycap") for o in ledger.apply([ledger.accrue("A0", ("d/x", UNIT, 900)) for _ in range(2)])] \
        == [20, 0]
    ledger.assert_sound()


# ---------------------------------------------------------------------------------------------
# Promo codes


def make_codes(ledger, *codes: str, uses_total: int = 0, uses_per_account: int = 0):
    request_id = ledger.request_id("codes")
    ledger.one(PromoCodesOp(request_id, b"d:" + request_id.encode(), "promo", codes=codes, uses_total=uses_total,
                            uses_per_account=uses_per_account))


def code_result(outcome) -> tuple[bool, str]:
    (result,) = outcome.body.calculation.promo_codes
    return result.accepted, result.reason


def test_single_use_code_is_accepted_exactly_once(ledger):
    make_codes(ledger, "ONCE-1", uses_total=1)
    outcomes = ledger.apply([ledger.accrue(a, ("p/x", UNIT, 500), codes=("ONCE-1",)) for a in ACCOUNTS])
    results = [code_result(o) for o in outcomes]
    assert results == [(True, "")] + [(False, "exhausted")] * 7
    assert [gave(o, "promo") for o in outcomes] == [40] + [0] * 7
    assert ledger.counter(b"C:ONCE-1") == 1

    # Rolled back, the code may be used once more, and only once.
    ledger.one(ledger.rollback(outcomes[0].body.transaction_id))
    assert ledger.counter(b"C:ONCE-1") == 0
    wave = ledger.apply([ledger.accrue(a, ("p/x", UNIT, 500), codes=("ONCE-1",)) for a in reversed(ACCOUNTS)])
    assert [code_result(o) for o in wave] == [(True, "")] + [(False, "exhausted")] * 7
    assert [gave(o, "promo") for o in wave] == [40] + [0] * 7
    ledger.assert_sound()


def test_code_that_unlocks_nothing_is_not_used_up(ledger):
    make_codes(ledger, "ONCE-2", uses_total=1)
    # No line the campaign takes: the code is answered not_applicable and stays unused.
    miss = ledger.apply([ledger.accrue("A0", ("grocery/bread", UNIT, 500), codes=("ONCE-2", "NO-SUCH"))])[0]
    assert [(r.code, r.accepted, r.reason) for r in miss.body.calculation.promo_codes] == [
        ("ONCE-2", False, "not_applicable"), ("NO-SUCH", False, "unknown")]
    assert ledger.counter(b"C:ONCE-2") == 0
    hit = ledger.apply([ledger.accrue("A1", ("p/x", UNIT, 500), codes=("ONCE-2",))])[0]
    assert code_result(hit) == (True, "") and gave(hit, "promo") == 40
    ledger.assert_sound()


def test_partial_return_keeps_the_code_used(ledger):
    make_codes(ledger, "ONCE-3", uses_total=1)
    body = ledger.one(ledger.accrue("A0", ("p/x", 2 * UNIT, 500), codes=("ONCE-3",)))
    ledger.one(ledger.rollback(body.transaction_id, ((1, UNIT),)))
    assert ledger.counter(b"C:ONCE-3") == 1
    assert code_result(ledger.apply([ledger.accrue("A1", ("p/x", UNIT, 500), codes=("ONCE-3",))])[0]) == (
        False, "exhausted")
    ledger.one(ledger.rollback(body.transaction_id, ((1, UNIT),)))  # now all of it
    assert ledger.counter(b"C:ONCE-3") == 0
    assert code_result(ledger.apply([ledger.accrue("A1", ("p/x", UNIT, 500), codes=("ONCE-3",))])[0]) == (True, "")
    ledger.assert_sound()


def test_per_account_code_is_accepted_once_per_account(ledger):
    make_codes(ledger, "EACH-1", uses_per_account=1)
    ops = [ledger.accrue(a, ("p/x", UNIT, 500), codes=("EACH-1",)) for a in ("A0", "A0", "A0", "A1", "A1")]
    results = [code_result(o) for o in ledger.apply(ops)]
    assert results == [(True, ""), (False, "limit_per_account"), (False, "limit_per_account"),
                       (True, ""), (False, "limit_per_account")]
    assert ledger.counter(b"C:EACH-1") == 2 and ledger.counter(b"c:EACH-1\0A0") == 1
    ledger.assert_sound()


# ---------------------------------------------------------------------------------------------
# Retries, and the invariant check


def test_a_retry_counts_nothing_twice(ledger):
    make_codes(ledger, "ONCE-4", uses_total=1)
    op = ledger.accrue("A0", ("b/x", UNIT, 300), ("u/x", UNIT, 300), ("d/x", UNIT, 300), ("p/x", UNIT, 300),
                       codes=("ONCE-4",))
    first, replay = ledger.apply([op, op])
    assert replay == first
    assert ledger.ledger.apply([op], ledger.now)[0] == first
    assert ledger.counter(b"B:budget") == 30 and ledger.counter(b"U:uses\0A0") == 1
    assert ledger.counter(ledger.day_key("daycap", "A0", ledger.now)) == 30
    assert ledger.counter(b"C:ONCE-4") == 1
    cancel = ledger.rollback(first.body.transaction_id)
    ledger.apply([cancel, cancel])
    for key in (b"B:budget", b"U:uses\0A0", b"C:ONCE-4", b"c:ONCE-4\0A0", ledger.day_key("daycap", "A0", ledger.now)):
        assert ledger.counter(key) == 0, key
    ledger.assert_sound()


def test_verify_replays_the_counters_and_finds_a_wrong_one(tmp_path):
    ledger = Harness(tmp_path / "ledger")
    try:
        make_codes(ledger, "ONCE-5", uses_total=1)
        outcomes = ledger.apply([ledger.accrue(a, ("b/x", 2 * UNIT, 300), ("d/x", UNIT, 300), ("u/x", UNIT, 300),
                                               ("p/x", UNIT, 300), codes=("ONCE-5",)) for a in ACCOUNTS])
        ledger.one(ledger.rollback(outcomes[0].body.transaction_id, ((1, UNIT),)))
        ledger.one(ledger.rollback(outcomes[1].body.transaction_id))
        assert ledger.verify_now() == []

        counters = ledger.ledger.env.open_db(b"counters")
        budget = ledger.counter(b"B:budget")
        assert budget == 100 - 15 - 30  # less half of A0's line and all of A1's purchase
        with ledger.ledger.env.begin(write=True) as txn:
            txn.put(b"B:budget", counter_bytes(budget - 1), db=counters)
        violations = ledger.verify_now()
        assert len(violations) == 1 and "'B:budget'" in violations[0] and "journal replay" in violations[0], violations

        # A counter the journal never wrote, and one gone missing, are found too.
        with ledger.ledger.env.begin(write=True) as txn:
            txn.put(b"B:budget", counter_bytes(budget), db=counters)
            txn.put(b"B:nobody", counter_bytes(5), db=counters)
            assert txn.delete(b"C:ONCE-5", db=counters)
        violations = ledger.verify_now()
        assert len(violations) == 2, violations
        assert any("'B:nobody'" in v for v in violations) and any("'C:ONCE-5'" in v for v in violations)
    finally:
        ledger.close()
