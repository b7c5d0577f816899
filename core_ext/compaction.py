"""Compaction: what time has made useless leaves the ledger, so LMDB reuses its pages.

One `CompactOp` is one step in one write transaction, examining at most `records_max` records;
the server runs steps until one says there is no more (server/app.py, `ledger.compaction_interval_s`),
between the purchases, never inside one. Each step, in order:

1. Forget requests past the return window (core_ext/retention.py): walking the `aging` index
   oldest first, each record it dates is removed (refusals, tombstones, and every record whose
   answer step 2 dropped). Records a ledger retained before they were indexed (below the
   `compact_aging_from_txn_id` mark) are found by walking the journal, as before, until that
   walk passes the mark.
2. Drop answers past the replay window: walking the journal oldest first, the record each entry
   owns leaves `idempotency` for the `retained` database as a `RetainedRec`, and is indexed in
   `aging` (8 bytes of time and the request key: 25 bytes a purchase in bench.ledger_bytes);
   walking `aging`, so are the records no journal entry dates. Rewritten in place, the small
   records would leave `idempotency`'s pages a quarter full (LMDB merges a page only under that);
   in their own database they fill theirs. Records a ledger retained in place before `retained`
   existed stay in `idempotency` until they are forgotten: every reader looks in both.
   Tombstones keep their stores until they are forgotten. Once an entry's answer is dropped,
   compaction never reads it again: the archive may take it (`journal_done_below_txn_id`).
3. Remove lots that can never change again (expired, or spent with their expiry past: a rollback
   would leave their points expired) and holds that ended a return window ago.
4. Replace promo codes whose validity ended a return window ago by a marker (`REMOVED_CODE`):
   the code stays taken, so it can never be generated or imported again (a new code of that name
   would start from no uses, but a rollback of a purchase that used the old one would give a use
   back to it), and presenting it is refused `expired`, as before.
5. Remove the counters nothing changes any more: a removed code's uses, and the counters of
   closed periods: a per-account day, week or month cap's counter whose period ended before the
   return window began (its number is below `program.period_keys` of the window's start, kept in
   `meta` under CLOSED_PERIODS_KEY). No purchase counts into a closed period again.
   A rollback that would give back to a removed counter (a rollback by transaction id of a
   purchase older than the return window, or of one that used a removed code) skips it: see
   `removed_counters`, which the ledger's `_uncount` and `kassa verify` both ask. Budgets and
   uses per account never close: they stay.

Where each walk stopped is kept in the `meta` database, so a step resumes where the last one
ended; a walk over a whole database makes one pass a run (PASS_DONE). The journal is in time
order (ids grow with time), and a walk stops at the first entry too young: a clock that stepped
back makes it keep records longer, never shorter.

A marker is what is left of a removed code for good: 6 bytes and its key (the code), where the
record and its counters took about 40 bytes and 30 more per account that used it.
"""

from __future__ import annotations

import time

import msgspec

from kassa.core_ext import records as rec
from kassa.core_ext.model import Code, CompactResult, Outcome
from kassa.core_ext.retention import Retention, aging_key, aging_time_ms, retained

# Where each walk stopped, in the `meta` database.
FORGOTTEN_TXN_KEY = b"compact_forgotten_txn_id"  # journal entries below it own no idempotency record
DROPPED_TXN_KEY = b"compact_dropped_txn_id"  # journal entries below it own no stored answer
DROPPED_AGING_KEY = b"compact_dropped_aging_key"  # aging entries below it hold no stored answer
# Journal entries from it on had their record indexed in `aging` when their answer was dropped;
# below it (a ledger compacted before the index), the forget walk of the journal finds them.
AGING_FROM_TXN_KEY = b"compact_aging_from_txn_id"
LOTS_KEY = b"compact_lots_key"  # the lots walk goes on from here (b"": from the start)
HOLDS_KEY = b"compact_holds_key"
CODES_KEY = b"compact_codes_key"
COUNTERS_KEY = b"compact_counters_key"
# A walk over a whole database (lots, holds, codes, counters) that reached its end in this run:
# it waits for the run's last step, which sets every such walk back to the start for the next run.
# (Restarting at once would let a walk of more records than a step examines take every step's
# budget, and the run would never end.)
PASS_DONE = b"\xff" * 8
_PASS_KEYS = (LOTS_KEY, HOLDS_KEY, CODES_KEY, COUNTERS_KEY)

# The (day, week, month) numbers below which period counters are closed: 3 x 8 bytes big-endian.
CLOSED_PERIODS_KEY = b"compact_closed_periods"
_PERIOD_KINDS = b"DWM"  # the first byte of a period counter's key (counters.pxi `_amount_keys`)

# What is left of a removed promo code: a record that no campaign owns and that expired at the
# epoch's first millisecond, so that the ledger refuses it `expired` and counts it taken.
REMOVED_CODE = msgspec.msgpack.encode(rec.PromoCodeRec("", 0, 1, 0, 0))

# Records one compaction step examines: one write transaction, a median 2.5-7 ms on the 2-core machine.
# The server starts a pass with steps of this size and sizes each next one by how long the last
# held the writer (server/servicers/admin.py, `compact_ledger`), within COMPACT_RECORDS_PER_STEP_MAX.
COMPACT_RECORDS_PER_TXN_MAX = 1_000  # records
NS_PER_US = 1000
COMPACT_RECORDS_PER_STEP_MAX = 50_000  # records: the most any step examines, however fast the last one was


class _TxnHead(msgspec.Struct, array_like=True, gc=False):
    """The first fields of a journal entry (`records.TxnRec`, in any stored format: read through
    `records.journal_body`): all a walk reads of it."""

    txn_id: int
    kind: int
    request_id: str
    account_id: str
    created_at_ms: int


_decode_head = msgspec.msgpack.Decoder(_TxnHead).decode


class _RecordHead(msgspec.Struct, array_like=True, gc=False):
    """The first fields of every idempotency record format (`IdempotencyRec`, `AccrueOutcomeRec`,
    `AccrueOutcomeV2`, `RetainedRec`): a walk decodes no more of a record than these."""

    digest: bytes
    txn_id: int


_decode_record_head = msgspec.msgpack.Decoder(_RecordHead).decode
_FORMAT_BYTES = (rec.IDEMPOTENCY_ACCRUE_V1, rec.IDEMPOTENCY_RETAINED_V1, rec.IDEMPOTENCY_ACCRUE_V2)


def _record_head(stored: bytes) -> tuple[int, _RecordHead]:
    """(format byte, or 0 for an `IdempotencyRec`; its digest and transaction id)."""
    if stored[0] in _FORMAT_BYTES:
        return stored[0], _decode_record_head(memoryview(stored)[1:])
    return 0, _decode_record_head(stored)


class _Step:
    """What one step did, and how many records it may still examine."""

    def __init__(self, txn, dbs, budget: int):
        self.txn = txn
        self.dbs = dbs
        self.budget = budget
        self.dropped = self.forgotten = self.lots = self.holds = self.codes = self.counters = 0
        self.more = False
        self.aging_keys = []  # of the records the answers walk retained: indexed at the walk's end

    def spend(self) -> bool:
        """Take one record from the budget; False (and `more`) when it is spent."""
        if self.budget <= 0:
            self.more = True
            return False
        self.budget -= 1
        return True

    def position(self, key: bytes) -> bytes:
        return self.txn.get(key, db=self.dbs["meta"]) or b""

    def set_position(self, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.dbs["meta"])


def compact(txn, dbs, now_ms: int, op, program=None) -> Outcome:
    """One step of compaction at `now_ms` (see the module's doc); `program` (the ruleset in
    force) numbers the periods, and without one no period closes."""
    started_ns = time.perf_counter_ns()
    windows = Retention(op.replay_window_ms, op.return_window_ms)
    step = _Step(txn, dbs, op.records_max)
    forget_ms, drop_ms = windows.forget_before_ms(now_ms), now_ms - windows.replay_window_ms
    _walk_journal(step, FORGOTTEN_TXN_KEY, forget_ms, _forget, _aging_from_txn_id(step))
    _forget_aging(step, forget_ms)
    _drop_aging(step, drop_ms)  # first: it then skips the aging entries the journal walk adds
    _walk_journal(step, DROPPED_TXN_KEY, drop_ms, _drop_answer)
    _put_aging_keys(step)
    _remove_lots(step, now_ms)
    _remove_holds(step, forget_ms)
    _remove_codes(step, forget_ms)
    if program is not None:
        _close_periods(step, program.period_keys(forget_ms))
    _remove_counters(step)
    if not step.more:
        for key in _PASS_KEYS:
            step.set_position(key, b"")
    return Outcome(Code.OK, body=CompactResult(step.dropped, step.forgotten, step.lots, step.holds, step.more,
                                               step.codes, step.counters,
                                               (time.perf_counter_ns() - started_ns) // NS_PER_US))


# -- idempotency records ---------------------------------------------------------------------


def _walk_journal(step: _Step, position_key: bytes, before_ms: int, act, upto_txn_id: int | None = None) -> None:
    """For journal entries from the stored position on (below `upto_txn_id`, if given), oldest
    first, while they were made at or before `before_ms`: `act(step, request key, format byte,
    record head, entry)` on the idempotency record the entry owns, if it still has one; store
    where the walk stopped. (One loop, few calls: it runs once per purchase, inside the writer lock.)"""
    stored = step.position(position_key)
    if upto_txn_id is not None and int.from_bytes(stored or bytes(8), "big") >= upto_txn_id:
        return
    cursor = step.txn.cursor(db=step.dbs["journal"])
    if not cursor.set_range(stored or bytes(8)):
        return
    get, idempotency = step.txn.get, step.dbs["idempotency"]
    next_id = 0
    for value in cursor.iternext(keys=False):
        head = _decode_head(rec.journal_body(value))
        if upto_txn_id is not None and head.txn_id >= upto_txn_id:
            next_id = upto_txn_id  # the walk is done for good (ids may skip the mark itself)
            break
        if head.created_at_ms > before_ms:
            break
        if step.budget <= 0:
            step.more = True
            break
        step.budget -= 1
        next_id = head.txn_id + 1
        if not head.request_id:
            continue
        request_key = head.request_id.encode()
        record_bytes = get(request_key, db=idempotency)
        if record_bytes is None:
            continue
        form, record = _record_head(record_bytes)
        if record.txn_id == head.txn_id:  # the record this entry made, not a later one's
            act(step, request_key, form, record, head)
    if next_id:
        step.set_position(position_key, next_id.to_bytes(8, "big"))


def _forget(step: _Step, request_key: bytes, form: int, record: _RecordHead, head: _TxnHead) -> None:
    step.txn.delete(request_key, db=step.dbs["idempotency"])
    step.forgotten += 1


def _drop_answer(step: _Step, request_key: bytes, form: int, record: _RecordHead, head: _TxnHead) -> None:
    """Keep only the `RetainedRec` (in `retained`), and index it in `aging`: the forget step finds
    it there, so that the journal entry may leave for the archive."""
    if form != rec.IDEMPOTENCY_RETAINED_V1:
        _retain(step, request_key, retained(record, head.created_at_ms))
        step.aging_keys.append(aging_key(head.created_at_ms, request_key))
        step.dropped += 1


def _put_aging_keys(step: _Step) -> None:
    """Index in `aging` the records the answers walk retained, in key order. Their keys are
    mostly past every key there: appended, LMDB fills a page before it starts the next, where a
    put at the end splits the last page in halves (66 page bytes an entry of 25 in
    bench.ledger_bytes before). A key below the last one is put in its place."""
    aging = step.dbs["aging"]
    put = step.txn.put
    for key in sorted(step.aging_keys):
        if not put(key, b"", db=aging, append=True):
            put(key, b"", db=aging)
    step.aging_keys.clear()


def _retain(step: _Step, request_key: bytes, value: bytes) -> None:
    """Move a request's record from `idempotency` to `retained`, in its retained form `value`."""
    step.txn.delete(request_key, db=step.dbs["idempotency"])
    step.txn.put(request_key, value, db=step.dbs["retained"])


def _forget_aging(step: _Step, before_ms: int) -> None:
    """Remove the records the `aging` index dates at or before `before_ms`, with their aging
    entries: the oldest are always first."""
    cursor = step.txn.cursor(db=step.dbs["aging"])
    while cursor.first() and aging_time_ms(cursor.key()) <= before_ms and step.spend():
        request_key = cursor.key()[8:]
        # A request's record is in one of the two: `retained` once its answer was dropped (or in
        # `idempotency`, retained in place by a ledger older than `retained`).
        for db in (step.dbs["retained"], step.dbs["idempotency"]):
            stored = step.txn.get(request_key, db=db)
            if stored is not None:
                if _forgettable(stored, before_ms):
                    step.txn.delete(request_key, db=db)
                    step.forgotten += 1
                break
        cursor.delete()


def _forgettable(stored: bytes, before_ms: int) -> bool:
    """Whether a record an aging entry names may go: one without a transaction (a refusal, a
    tombstone), or a retained one made at or before `before_ms`. A record with a transaction
    that is younger (an original that a tombstone's aging entry names, because the tombstone did
    not cancel it) waits for its own aging entry, written when its answer is dropped."""
    form, record = _record_head(stored)
    if record.txn_id == 0:
        return True
    return form == rec.IDEMPOTENCY_RETAINED_V1 and rec.decode_retained(memoryview(stored)[1:]).at_ms <= before_ms


def _aging_from_txn_id(step: _Step) -> int:
    """The `AGING_FROM_TXN_KEY` mark, set on the first step that runs with the aging index: where
    the answers walk stood then (0 on a ledger that never dropped an answer)."""
    stored = step.position(AGING_FROM_TXN_KEY)
    if not stored:
        stored = step.position(DROPPED_TXN_KEY) or bytes(8)
        step.set_position(AGING_FROM_TXN_KEY, stored)
    return int.from_bytes(stored, "big")


def journal_done_below_txn_id(get) -> int:
    """Journal entries below this id are never read by compaction again (their answers dropped,
    their records indexed in `aging`): the journal archive may take them. `get(db_name, key)`
    reads in any transaction; 0 when compaction never ran."""
    def mark(key: bytes) -> int:
        stored = get("meta", key)
        return int.from_bytes(stored, "big") if stored else 0

    forgotten = mark(FORGOTTEN_TXN_KEY)
    # Before the first step with the index, or while the forget walk of the journal still has
    # entries below the mark to read: the entries its walk has passed (the old rule).
    if get("meta", AGING_FROM_TXN_KEY) is None or forgotten < mark(AGING_FROM_TXN_KEY):
        return forgotten
    return mark(DROPPED_TXN_KEY)


def _drop_aging(step: _Step, before_ms: int) -> None:
    """Drop the answers of the records no journal entry dates (refusals), made at or before
    `before_ms`. A walk that got there goes on from `before_ms` next time: the aging entries
    made at or before it later are the answers walk's (retained already), and a refusal is
    always indexed at its batch's time, after `before_ms` (a clock that stepped back a replay
    window keeps its answer until it is forgotten)."""
    stored = step.position(DROPPED_AGING_KEY)
    idempotency = step.dbs["idempotency"]
    cursor = step.txn.cursor(db=step.dbs["aging"])
    if not cursor.set_range(stored or bytes(8)):
        return
    next_key = stored
    for key, _ in cursor.iternext():
        if aging_time_ms(key) > before_ms or not step.spend():
            break
        value = step.txn.get(key[8:], db=idempotency)
        form, record = _record_head(value) if value is not None else (0, None)
        if record is not None and record.txn_id == 0 and record.digest and form != rec.IDEMPOTENCY_RETAINED_V1:
            _retain(step, key[8:], retained(record, aging_time_ms(key)))
            step.dropped += 1
        next_key = key + b"\x00"  # the next key after this one
    if not step.more:
        next_key = max(next_key, aging_key(before_ms + 1, b""))
    if next_key != stored:
        step.set_position(DROPPED_AGING_KEY, next_key)


# -- lots and holds --------------------------------------------------------------------------


def _walk_records(step: _Step, name: str, position_key: bytes, removable, by_key: bool = False) -> int:
    """Delete the records of `name` that `removable(record)` (`removable(key)` when `by_key`)
    says may go, from the stored position on, up to the end (then PASS_DONE). Returns how many."""
    stored = step.position(position_key)
    if stored == PASS_DONE:
        return 0
    cursor = step.txn.cursor(db=step.dbs[name])
    removed = 0
    found = cursor.set_range(stored) if stored else cursor.first()
    while found:
        if not step.spend():
            step.set_position(position_key, cursor.key())
            return removed
        if removable(cursor.key() if by_key else cursor.value()):
            cursor.delete()  # moves to the next record, if there is one
            found = bool(cursor.key())
            removed += 1
        else:
            found = cursor.next()
    step.set_position(position_key, PASS_DONE)
    return removed


def _remove_lots(step: _Step, now_ms: int) -> None:
    """Lots nothing will change again: expired, or spent with their expiry past (a rollback
    leaves points whose lot has expired expired; a purchase adds only to a lot of the same
    expiry). Never an account's open lots; spent lots that never expire stay (a rollback can
    refill them)."""
    accounts = step.dbs["accounts"]

    def removable(value: bytes) -> bool:
        lot = rec.decode_lot(value)
        ended = lot.state == rec.LotState.EXPIRED or (
            lot.state == rec.LotState.ACTIVE and lot.remaining == 0 and 0 < lot.expires_at_ms <= now_ms)
        if not ended or lot.remaining:
            return False
        stored = step.txn.get(lot.account_id.encode(), db=accounts)
        if stored is None:
            return False
        account = rec.decode_account(stored)
        return lot.lot_id not in account.open_lot_ids

    step.lots += _walk_records(step, "lots", LOTS_KEY, removable)


def _remove_holds(step: _Step, before_ms: int) -> None:
    """Holds captured, voided or expired, whose expiry is past the return window: a capture or
    void naming one later is answered NOT_FOUND."""

    def removable(value: bytes) -> bool:
        hold = rec.decode_hold(value)
        return hold.state != rec.HoldState.LIVE and hold.expires_at_ms <= before_ms

    step.holds += _walk_records(step, "holds", HOLDS_KEY, removable)


# -- promo codes and counters ----------------------------------------------------------------


def _remove_codes(step: _Step, before_ms: int) -> None:
    """Codes whose validity ended at or before `before_ms` become markers; the counters walk
    then removes their uses (`removed_counters` says they are gone from now on)."""
    stored = step.position(CODES_KEY)
    if stored == PASS_DONE:
        return
    cursor = step.txn.cursor(db=step.dbs["codes"])
    found = cursor.set_range(stored) if stored else cursor.first()
    while found:
        if not step.spend():
            step.set_position(CODES_KEY, cursor.key())
            return
        value = cursor.value()
        if value != REMOVED_CODE and 0 < rec.decode_promo_code(value).valid_to_ms <= before_ms:
            cursor.put(cursor.key(), REMOVED_CODE)
            step.codes += 1
        found = cursor.next()
    step.set_position(CODES_KEY, PASS_DONE)


def _close_periods(step: _Step, numbers: tuple) -> None:
    """Periods numbered below `numbers` (day, week, month) are closed; never reopened by a clock
    that stepped back."""
    closed = [max(old, new) for old, new in zip(_closed_periods(step.position(CLOSED_PERIODS_KEY)), numbers)]
    step.set_position(CLOSED_PERIODS_KEY, b"".join(number.to_bytes(8, "big") for number in closed))


def _closed_periods(stored: bytes | None) -> tuple[int, int, int]:
    if not stored:
        return 0, 0, 0
    return tuple(int.from_bytes(stored[index:index + 8], "big") for index in (0, 8, 16))


def _period_closed(key: bytes, closed: tuple[int, int, int]) -> bool:
    """Whether `key` is a day, week or month counter (`D<number>:<campaign>\\0<account>`) of a
    closed period."""
    kind = _PERIOD_KINDS.find(key[:1])
    end = key.find(b":")
    if kind < 0 or end < 2 or not key[1:end].isdigit():
        return False
    return int(key[1:end]) < closed[kind]


def _remove_counters(step: _Step) -> None:
    """The counters `removed_counters` names: closed periods', removed codes'."""
    removed = removed_counters(lambda name, key: step.txn.get(key, db=step.dbs[name]))
    step.counters += _walk_records(step, "counters", COUNTERS_KEY, removed, by_key=True)


def counters_kept(get, counters: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """`counters` [(key, sum)] less those compaction has removed from the ledger: the journal
    archive carries no sum for them (`archive/counters` would otherwise grow with every closed
    period), and verify compares none."""
    removed = removed_counters(get)
    return [(key, total) for key, total in counters if not (removed(key) and get("counters", key) is None)]


def removed_counters(get):
    """A function of a counter's key: whether compaction removed it, or may remove it, for good
    (a closed period's, a removed code's). A rollback gives nothing back to such a counter and
    its journal entry records no change to it; `kassa verify` accepts its absence.
    `get(db name, key)` reads in any transaction."""
    closed = _closed_periods(get("meta", CLOSED_PERIODS_KEY))

    def removed(key: bytes) -> bool:
        if key[:2] in (b"C:", b"c:"):
            return get("codes", key[2:].split(b"\0", 1)[0]) == REMOVED_CODE
        return _period_closed(key, closed)
    return removed
