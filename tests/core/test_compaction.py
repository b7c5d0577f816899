"""Compaction steps against a real LMDB ledger in a temp directory: bounded, resumable, complete.

The server-level behaviour (refusals, returns, file size) is tests/server/test_retention.py's.
"""

from __future__ import annotations

from kassa.core_ext import Ledger, Program
from kassa.core_ext import records
from kassa.core_ext.compaction import (
    AGING_FROM_TXN_KEY, DROPPED_TXN_KEY, FORGOTTEN_TXN_KEY, journal_done_below_txn_id,
)
from kassa.core_ext.compaction import REMOVED_CODE
from kassa.core_ext.journal_archive import archive_dir_of, archive_journal, state
from kassa.core_ext.verify import check_ledger
from kassa.core_ext.model import (
    AccrueOp, Code, CompactOp, CreateAccountOp, Customer, IdKind, Line, PromoCodesOp, Reason, Receipt, RedeemOp,
    RollbackKind, RollbackOp,
)
from kassa.core_ext.retention import OCCURRED_AT_AHEAD_MAX_S, Retention
from tests.core.programs import program

T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z
DAY_MS = 86_400_000
MAP_SIZE_BYTES = 64 * 1024**2
HOLD_TTL_S = 900
PURCHASES = 60
RECORDS_PER_STEP = 7  # small, so that one run takes many steps
WINDOWS = Retention()
CAMPAIGNS = """
[[campaigns]]
id = "base"
when = {}
effect = { kind = "earn_percent", percent_bps = 500 }
"""


def purchase(index: int) -> AccrueOp:
    basket = Receipt("s1", "t1", f"R{index}", (Line(1, "sku", "cat", 1000, 10_000, 10_000),))
    return AccrueOp(f"buy-{index}", index.to_bytes(16, "big"), Customer(IdKind.ACCOUNT, "A1"), basket)


def stored_kinds(ledger) -> dict[str, int]:
    """Idempotency records by kind (in `idempotency` and `retained`), and the aging index's entries."""
    txn, dbs = ledger.raw_transaction()
    with txn:
        kinds = {"full": 0, "retained": 0, "tombstone": 0}
        for name in ("idempotency", "retained"):
            for _, value in txn.cursor(db=dbs[name]):
                record = records.decode_idempotency(value)
                kind = "retained" if type(record) is records.RetainedRec else "tombstone" if not record.digest else "full"
                kinds[kind] += 1
        kinds["aging"] = txn.stat(dbs["aging"])["entries"]
    return kinds


STEPS_PER_RUN_MAX = 500  # a run that takes more never ends


def entries(ledger, name: str) -> int:
    txn, dbs = ledger.raw_transaction()
    with txn:
        return txn.stat(dbs[name])["entries"]


def request_record(ledger, request_id: bytes):
    """A request's record, from `idempotency` or `retained` (it is never in both)."""
    txn, dbs = ledger.raw_transaction()
    with txn:
        stored = [txn.get(request_id, db=dbs[name]) for name in ("idempotency", "retained")]
    assert None in stored
    found = [value for value in stored if value is not None]
    return records.decode_idempotency(found[0]) if found else None


def run_steps(ledger, now_ms: int) -> list:
    """Compaction to the end at `now_ms`, one RECORDS_PER_STEP step at a time."""
    op = CompactOp(WINDOWS.replay_window_ms, WINDOWS.return_window_ms, RECORDS_PER_STEP)
    steps = []
    while True:
        assert len(steps) < STEPS_PER_RUN_MAX, steps[-3:]
        (outcome,) = ledger.apply([op], now_ms)
        assert outcome.code == Code.OK, outcome
        steps.append(outcome.body)
        if not outcome.body.more:
            return steps


def a_ledger(tmp_path) -> Ledger:
    ledger = Ledger(str(tmp_path / "ledger"), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)
    ledger.apply([CreateAccountOp("create-A1", b"a" * 16, "A1")], T0_MS)
    ledger.apply([purchase(index) for index in range(PURCHASES)], T0_MS)
    ledger.apply([RedeemOp("spend-too-much", b"r" * 16, Customer(IdKind.ACCOUNT, "A1"), 10**9, 10**12)], T0_MS)
    ledger.apply([RollbackOp("cancel-early", b"c" * 16, original_request_id="not-yet")], T0_MS)
    return ledger


class TestSteps:
    def test_a_run_is_cut_into_bounded_steps_that_together_drop_every_answer(self, tmp_path):
        ledger = a_ledger(tmp_path)
        assert stored_kinds(ledger) == {"full": PURCHASES + 3, "retained": 0, "tombstone": 1, "aging": 3}

        steps = run_steps(ledger, T0_MS + WINDOWS.replay_window_ms + 1)

        assert len(steps) > (PURCHASES + 3) // RECORDS_PER_STEP
        assert sum(step.answers_dropped for step in steps) == PURCHASES + 3
        # The tombstone keeps its stores until the return window ends; the rest keep no answer.
        # Each record with a transaction (the account's creation, the purchases) is indexed in
        # `aging` as its answer is dropped: the forget step finds it there, not in the journal.
        assert stored_kinds(ledger) == {"full": 0, "retained": PURCHASES + 3, "tombstone": 1, "aging": PURCHASES + 4}
        # The retained records left `idempotency` for their own database: only the tombstone stays.
        assert entries(ledger, "retained") == PURCHASES + 3
        assert entries(ledger, "idempotency") == 1
        assert ledger.verify(T0_MS + WINDOWS.replay_window_ms + 1) == []

    def test_inside_the_replay_window_a_run_changes_nothing(self, tmp_path):
        ledger = a_ledger(tmp_path)
        before = stored_kinds(ledger)

        steps = run_steps(ledger, T0_MS + WINDOWS.replay_window_ms - 1)  # a window old is past it

        assert sum(step.answers_dropped + step.requests_forgotten for step in steps) == 0
        assert stored_kinds(ledger) == before

    def test_past_the_return_window_every_record_and_aging_entry_leaves(self, tmp_path):
        ledger = a_ledger(tmp_path)
        run_steps(ledger, T0_MS + WINDOWS.replay_window_ms + 1)

        steps = run_steps(ledger, T0_MS + WINDOWS.return_window_ms + OCCURRED_AT_AHEAD_MAX_S * 1000 + 1)

        assert sum(step.requests_forgotten for step in steps) == PURCHASES + 4
        assert stored_kinds(ledger) == {"full": 0, "retained": 0, "tombstone": 0, "aging": 0}
        assert ledger.verify(T0_MS + 400 * DAY_MS) == []


FORGET_MS = T0_MS + WINDOWS.return_window_ms + OCCURRED_AT_AHEAD_MAX_S * 1000 + 1  # every request forgettable


def meta_mark(ledger, key: bytes) -> int:
    txn, dbs = ledger.raw_transaction()
    with txn:
        stored = txn.get(key, db=dbs["meta"])
    return int.from_bytes(stored, "big") if stored else 0


def done_below(ledger) -> int:
    txn, dbs = ledger.raw_transaction()
    with txn:
        return journal_done_below_txn_id(lambda name, key: txn.get(key, db=dbs[name]))


def empty_the_journal(ledger) -> int:
    """What the archive does to the entries compaction is done with: they leave the journal."""
    txn, dbs = ledger.env.begin(write=True), ledger.raw_transaction()[1]
    with txn:
        keys = [key for key, _ in txn.cursor(db=dbs["journal"])]
        for key in keys:
            txn.delete(key, db=dbs["journal"])
    return len(keys)


def as_before_the_aging_index(ledger) -> int:
    """The state a ledger compacted before records with a transaction were indexed in `aging`:
    retained in place in `idempotency` (no `retained` database then), their aging entries and the
    `compact_aging_from_txn_id` mark gone. Returns the records unindexed."""
    txn, dbs = ledger.env.begin(write=True), ledger.raw_transaction()[1]
    with txn:
        for key, value in list(txn.cursor(db=dbs["retained"])):
            txn.put(key, value, db=dbs["idempotency"])
            txn.delete(key, db=dbs["retained"])
        keys = [key for key, _ in txn.cursor(db=dbs["aging"])
                if (stored := txn.get(key[8:], db=dbs["idempotency"])) is not None
                and records.decode_idempotency(stored).txn_id != 0]
        for key in keys:
            txn.delete(key, db=dbs["aging"])
        txn.delete(AGING_FROM_TXN_KEY, db=dbs["meta"])
    return len(keys)


class TestWithoutTheJournal:
    def test_past_the_replay_window_compaction_is_done_with_every_entry(self, tmp_path):
        ledger = a_ledger(tmp_path)
        run_steps(ledger, T0_MS + WINDOWS.replay_window_ms + 1)

        # Every entry below the answers walk's mark: the archive may take them all.
        assert done_below(ledger) == meta_mark(ledger, DROPPED_TXN_KEY)
        assert done_below(ledger) > PURCHASES

    def test_records_whose_entries_left_the_journal_are_still_forgotten_after_the_return_window(self, tmp_path):
        ledger = a_ledger(tmp_path)
        run_steps(ledger, T0_MS + WINDOWS.replay_window_ms + 1)
        removed = empty_the_journal(ledger)

        steps = run_steps(ledger, FORGET_MS)

        assert removed > PURCHASES
        assert sum(step.requests_forgotten for step in steps) == PURCHASES + 4
        assert stored_kinds(ledger) == {"full": 0, "retained": 0, "tombstone": 0, "aging": 0}

    def test_a_record_retained_before_the_index_is_forgotten_by_the_journal_walk(self, tmp_path):
        ledger = a_ledger(tmp_path)
        run_steps(ledger, T0_MS + WINDOWS.replay_window_ms + 1)
        unindexed = as_before_the_aging_index(ledger)
        old_rule = done_below(ledger)  # nothing forgotten yet: the archive must wait, as before

        steps = run_steps(ledger, FORGET_MS)

        assert unindexed == PURCHASES + 1
        assert old_rule == 0
        assert sum(step.requests_forgotten for step in steps) == PURCHASES + 4
        assert stored_kinds(ledger) == {"full": 0, "retained": 0, "tombstone": 0, "aging": 0}
        assert meta_mark(ledger, FORGOTTEN_TXN_KEY) == meta_mark(ledger, AGING_FROM_TXN_KEY)
        assert done_below(ledger) == meta_mark(ledger, DROPPED_TXN_KEY)

    def test_a_tombstones_aging_entry_leaves_the_original_it_did_not_cancel(self, tmp_path):
        """A tombstone scoped to another store does not cancel the original: the original's record
        replaces it, and the tombstone's (older) aging entry must not forget it early."""
        ledger = Ledger(str(tmp_path / "ledger"), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)
        ledger.apply([CreateAccountOp("create-A1", b"a" * 16, "A1")], T0_MS)
        ledger.apply([RollbackOp("cancel-early", b"c" * 16, original_request_id="buy-0", stores=("s2",))], T0_MS)
        later_ms = T0_MS + WINDOWS.return_window_ms - WINDOWS.replay_window_ms
        (bought,) = ledger.apply([purchase(0)], later_ms)
        assert bought.code == Code.OK, bought
        run_steps(ledger, later_ms + WINDOWS.replay_window_ms + 1)  # its answer dropped

        run_steps(ledger, FORGET_MS)  # the tombstone's time is past the return window, the purchase's not

        kept = request_record(ledger, b"buy-0")
        assert kept.txn_id == bought.body.transaction_id
        assert type(kept) is records.RetainedRec

    def test_a_refusal_made_after_a_finished_run_has_its_answer_dropped_by_a_later_one(self, tmp_path):
        """The aging walk goes on from where a finished run's window ended, not from its last entry."""
        ledger = a_ledger(tmp_path)
        run_steps(ledger, T0_MS + WINDOWS.replay_window_ms + 1)
        later_ms = T0_MS + DAY_MS
        (refusal,) = ledger.apply([RedeemOp("spend-too-much-later", b"s" * 16, Customer(IdKind.ACCOUNT, "A1"),
                                            10**9, 10**12)], later_ms)

        steps = run_steps(ledger, later_ms + WINDOWS.replay_window_ms + 1)

        kept = request_record(ledger, b"spend-too-much-later")
        assert refusal.code != Code.OK
        assert sum(step.answers_dropped for step in steps) == 1
        assert type(kept) is records.RetainedRec


# -- promo codes and counters of closed periods ------------------------------------------------

LIMITED_CAMPAIGNS = """
[[campaigns]]
id = "daycap"
when = { category_prefixes = ["d/"] }
effect = { kind = "earn_percent", percent_bps = 1000 }
limits = { account_day_max_points = 50, budget_points = 100000 }

[[campaigns]]
id = "promo"
promo_code = true
when = { category_prefixes = ["p/"] }
effect = { kind = "earn_fixed", points = 40 }
"""
SHOPPERS = [f"S{index}" for index in range(12)]  # more per-account code counters than one step examines
CODE = "SPRING-1"
CODE_VALID_DAYS = 10
PAST_THE_WINDOWS_MS = T0_MS + CODE_VALID_DAYS * DAY_MS + WINDOWS.return_window_ms + OCCURRED_AT_AHEAD_MAX_S * 1000 + DAY_MS


def a_limited_ledger(tmp_path, shoppers: list[str] = SHOPPERS) -> tuple[Ledger, list[int]]:
    """Every shopper buys once at T0 with a day-capped line and the code: (ledger, their txn ids)."""
    ledger = Ledger(str(tmp_path / "ledger"), Program(program(LIMITED_CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S,
                    sync=False)
    ledger.apply([CreateAccountOp(f"create-{name}", b"a" * 16, name) for name in shoppers], T0_MS)
    (made,) = ledger.apply([PromoCodesOp("codes-1", b"c" * 16, "promo", codes=(CODE,),
                                         valid_to_ms=T0_MS + CODE_VALID_DAYS * DAY_MS, uses_per_account=1)], T0_MS)
    assert made.code == Code.OK, made
    outcomes = ledger.apply([limited_purchase(name, f"buy-{name}") for name in shoppers], T0_MS)
    assert all(outcome.code == Code.OK for outcome in outcomes), outcomes
    return ledger, [outcome.body.transaction_id for outcome in outcomes]


def limited_purchase(account_id: str, request_id: str) -> AccrueOp:
    basket = Receipt("s1", "t1", request_id, (Line(1, "sku-d", "d/x", 1000, 10_000, 10_000),
                                              Line(2, "sku-p", "p/x", 1000, 5_000, 5_000)), promo_codes=(CODE,))
    return AccrueOp(request_id, request_id.encode().ljust(16, b"-"), Customer(IdKind.ACCOUNT, account_id), basket)


def counter_kinds(ledger) -> dict[str, int]:
    """Counters by the first byte of their key (D day cap, B budget, C / c code uses), and codes."""
    txn, dbs = ledger.raw_transaction()
    with txn:
        kinds: dict[str, int] = {}
        for key, _ in txn.cursor(db=dbs["counters"]):
            kinds[key[:1].decode()] = kinds.get(key[:1].decode(), 0) + 1
        kinds["codes"] = txn.stat(dbs["codes"])["entries"]
    return kinds


def stored_code(ledger) -> bytes | None:
    txn, dbs = ledger.raw_transaction()
    with txn:
        return txn.get(CODE.encode(), db=dbs["codes"])


class TestCodesAndCounters:
    def test_inside_the_windows_codes_and_period_counters_stay(self, tmp_path):
        ledger, _ = a_limited_ledger(tmp_path)
        before = counter_kinds(ledger)
        assert before == {"B": 1, "C": 1, "D": len(SHOPPERS), "c": len(SHOPPERS), "codes": 1}

        run_steps(ledger, T0_MS + WINDOWS.return_window_ms)  # day T0 ended less than the window (and margin) ago

        assert counter_kinds(ledger) == before

    def test_past_their_time_codes_and_closed_period_counters_leave_in_bounded_steps(self, tmp_path):
        ledger, _ = a_limited_ledger(tmp_path)

        steps = run_steps(ledger, PAST_THE_WINDOWS_MS)

        assert len(steps) > 2 * len(SHOPPERS) // RECORDS_PER_STEP
        assert sum(step.codes_removed for step in steps) == 1
        assert sum(step.counters_removed for step in steps) == 1 + 2 * len(SHOPPERS)
        # The budget never closes; the code is a marker, so the key stays taken.
        assert counter_kinds(ledger) == {"B": 1, "codes": 1}
        assert stored_code(ledger) == REMOVED_CODE
        assert ledger.verify(PAST_THE_WINDOWS_MS) == []

    def test_a_run_ends_when_a_walk_holds_a_multiple_of_a_steps_records(self, tmp_path):
        """A walk over a whole database makes one pass a run: restarted at once, the lots walk
        would take every step's budget and the walks after it would never finish."""
        for shoppers in (2 * RECORDS_PER_STEP, 3 * RECORDS_PER_STEP):
            ledger, _ = a_limited_ledger(tmp_path / str(shoppers), [f"S{index}" for index in range(shoppers)])

            run_steps(ledger, PAST_THE_WINDOWS_MS)

            assert counter_kinds(ledger) == {"B": 1, "codes": 1}

    def test_a_rollback_gives_nothing_back_to_a_removed_counter_and_verify_agrees(self, tmp_path):
        ledger, txn_ids = a_limited_ledger(tmp_path)
        run_steps(ledger, PAST_THE_WINDOWS_MS)

        (outcome,) = ledger.apply([RollbackOp("cancel-S0", b"x" * 16, transaction_id=txn_ids[0])],
                                  PAST_THE_WINDOWS_MS)

        assert outcome.code == Code.OK, outcome
        assert counter_kinds(ledger) == {"B": 1, "codes": 1}  # no closed-period or code counter came back
        assert ledger.verify(PAST_THE_WINDOWS_MS) == []

    def test_a_removed_code_cannot_be_imported_again_nor_used(self, tmp_path):
        ledger, _ = a_limited_ledger(tmp_path)
        run_steps(ledger, PAST_THE_WINDOWS_MS)

        (again,) = ledger.apply([PromoCodesOp("codes-2", b"d" * 16, "promo", codes=(CODE,), uses_per_account=1)],
                                PAST_THE_WINDOWS_MS)
        (presented,) = ledger.apply([limited_purchase("S0", "buy-late")], PAST_THE_WINDOWS_MS)

        assert again.code == Code.ALREADY_EXISTS
        assert [(code.accepted, code.reason) for code in presented.body.calculation.promo_codes] == [(False, "expired")]
        assert stored_code(ledger) == REMOVED_CODE
        assert ledger.verify(PAST_THE_WINDOWS_MS) == []

    def test_the_archive_drops_a_removed_counters_sum_and_verify_passes_across_the_boundary(self, tmp_path):
        ledger, _ = a_limited_ledger(tmp_path)
        archive_dir = archive_dir_of(ledger.path)
        archive_journal(ledger.env, ledger.raw_transaction()[1], archive_dir, T0_MS + DAY_MS,
                        now_ms=PAST_THE_WINDOWS_MS)
        assert carried_kinds(ledger) == [b"B", b"C"] + [b"D"] * len(SHOPPERS) + [b"c"] * len(SHOPPERS)
        run_steps(ledger, PAST_THE_WINDOWS_MS)
        assert archived_violations(ledger, PAST_THE_WINDOWS_MS) == []  # the carried sums of removed counters too

        (later,) = ledger.apply([limited_purchase("S0", "buy-later")], PAST_THE_WINDOWS_MS)
        archive_journal(ledger.env, ledger.raw_transaction()[1], archive_dir, PAST_THE_WINDOWS_MS + 1,
                        now_ms=PAST_THE_WINDOWS_MS + DAY_MS)

        assert later.code == Code.OK
        assert carried_kinds(ledger) == [b"B", b"D"]  # the budget, and the later purchase's own day
        assert archived_violations(ledger, PAST_THE_WINDOWS_MS + DAY_MS) == []


def carried_kinds(ledger) -> list[bytes]:
    """The first bytes of the counter keys `archive/counters` carries a sum for, in key order."""
    txn, dbs = ledger.raw_transaction()
    with txn:
        return [key[:1] for key in state.read_counters(lambda name, key: txn.get(key, db=dbs[name]))]


def archived_violations(ledger, now_ms: int) -> list[str]:
    txn, dbs = ledger.raw_transaction()
    with txn:
        return check_ledger(txn, dbs, now_ms, archive_dir_of(ledger.path))


# -- retained records in their own database ----------------------------------------------------

DENSE_PURCHASES = 3_000  # enough records for page counts to mean something (tens of pages)
# Past the replay window a purchase's record is ~49 bytes of value plus its key: in `retained`,
# even half-full pages hold it in under 160 bytes. Rewritten in place in `idempotency` it kept
# the pages of its full answer: bench.ledger_bytes measured 336 page bytes a purchase.
RETAINED_PAGE_BYTES_PER_PURCHASE_MAX = 160  # bytes
PAGE_BYTES = 4096  # LMDB's page on this platform


def request_page_bytes(ledger) -> int:
    """Bytes of the pages (leaf, branch, overflow) `idempotency` and `retained` hold together."""
    txn, dbs = ledger.raw_transaction()
    with txn:
        stats = [txn.stat(dbs[name]) for name in ("idempotency", "retained")]
    return PAGE_BYTES * sum(stat["leaf_pages"] + stat["branch_pages"] + stat["overflow_pages"] for stat in stats)


def dense_ledger(tmp_path) -> Ledger:
    ledger = Ledger(str(tmp_path / "ledger"), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)
    ledger.apply([CreateAccountOp("create-A1", b"a" * 16, "A1")], T0_MS)
    for first in range(0, DENSE_PURCHASES, 1_000):
        ledger.apply([purchase(index) for index in range(first, first + 1_000)], T0_MS)
    return ledger


def compact_to_the_end(ledger, now_ms: int) -> None:
    op = CompactOp(WINDOWS.replay_window_ms, WINDOWS.return_window_ms, 1_000)
    while True:
        (outcome,) = ledger.apply([op], now_ms)
        assert outcome.code == Code.OK, outcome
        if not outcome.body.more:
            return


class TestRetainedDatabase:
    def test_past_the_replay_window_the_records_pages_shrink_to_their_small_form(self, tmp_path):
        ledger = dense_ledger(tmp_path)
        full_page_bytes = request_page_bytes(ledger)

        compact_to_the_end(ledger, T0_MS + WINDOWS.replay_window_ms + 1)

        # In place, the records kept their full answers' pages (LMDB merges only pages under a
        # quarter full): the same page bytes. In `retained`, well under two thirds of them (half
        # before answers were stored as `AccrueOutcomeV2`, which made the full ones smaller).
        assert request_page_bytes(ledger) * 3 < full_page_bytes * 2
        assert request_page_bytes(ledger) / DENSE_PURCHASES <= RETAINED_PAGE_BYTES_PER_PURCHASE_MAX
        assert entries(ledger, "idempotency") == 0

    def test_a_retained_record_refuses_its_retry_answers_its_return_and_is_forgotten(self, tmp_path):
        ledger = a_ledger(tmp_path)
        past_replay_ms = T0_MS + WINDOWS.replay_window_ms + 1
        run_steps(ledger, past_replay_ms)

        (retry,) = ledger.apply([purchase(0)], past_replay_ms)
        (returned,) = ledger.apply([RollbackOp("return-0", b"z" * 16, original_request_id="buy-0")], past_replay_ms)
        run_steps(ledger, FORGET_MS + WINDOWS.replay_window_ms)  # the return's answer dropped ...
        run_steps(ledger, FORGET_MS + WINDOWS.replay_window_ms)  # ... then its record forgotten too

        assert retry.code == Code.FAILED_PRECONDITION
        assert retry.reason == Reason.ANSWER_NOT_KEPT
        assert returned.code == Code.OK, returned
        assert returned.body.kind != RollbackKind.PENDING_ORIGINAL  # it found the original, no tombstone
        assert entries(ledger, "retained") == 0
        assert entries(ledger, "idempotency") == 0

    def test_records_retained_in_place_by_an_older_ledger_still_answer(self, tmp_path):
        """A ledger compacted before `retained` existed kept retained records in `idempotency`."""
        ledger = a_ledger(tmp_path)
        past_replay_ms = T0_MS + WINDOWS.replay_window_ms + 1
        run_steps(ledger, past_replay_ms)
        moved = as_before_the_aging_index(ledger)

        (retry,) = ledger.apply([purchase(1)], past_replay_ms)
        (returned,) = ledger.apply([RollbackOp("return-1", b"z" * 16, original_request_id="buy-1")], past_replay_ms)
        steps = run_steps(ledger, FORGET_MS + WINDOWS.replay_window_ms)  # the return's answer dropped ...
        steps += run_steps(ledger, FORGET_MS + WINDOWS.replay_window_ms)  # ... then its record forgotten too

        assert moved == PURCHASES + 1
        assert retry.reason == Reason.ANSWER_NOT_KEPT
        assert returned.body.kind != RollbackKind.PENDING_ORIGINAL
        assert sum(step.requests_forgotten for step in steps) == PURCHASES + 5
        assert entries(ledger, "idempotency") == 0
        assert entries(ledger, "retained") == 0
