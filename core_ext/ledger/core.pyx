# cython: language_level=3
"""The points ledger over LMDB: accounts, identifiers, lots, holds, journal, idempotency.

`Ledger.apply(ops, now_ms)` applies a whole batch of operations in one LMDB write transaction and
one synced commit; each operation gets its own `Outcome`. Every handler checks everything before it
writes anything, so a refused operation leaves no trace in the batch but its idempotency record.
Reads (`calculate`, `balance`, `account`, `statement`) run in read transactions and settle time
virtually: an expired lot or hold never counts, whether or not a write has settled it yet.

This file is the one compiled module; the files beside it are included into it, one concern each
(core.pxd declares what they share):

    batch.pxi        a write transaction (_Batch: cursors, ids, call counts) and a read one (_ReadView)
    customers.pxi    accounts, cards and phones: finding, creating, blocking, attributes
    lots.pxi         lots and expiry: settling time, balances, earning and spending points, the sweeper
    journal.pxi      journal entries, idempotency records and replays, tombstones
    counters.pxi     campaign limits, budgets and use counters
    promo_codes.pxi  promo code statuses and generation
    groups.pxi       joining and leaving a points pool
    rulesets.pxi     the serving ruleset and rule evaluation inside the ledger
    tiers.pxi        tier windows, activity and tier grants
    purchases.pxi    accrue, redeem, adjust
    events.pxi       customer events (referrals, check-ins, ...)
    rollbacks.pxi    rollbacks: reversing purchases, returns by line, voiding holds
    moves.pxi        partitions: an empty member moving to its group's partition
"""

import os
import random

import lmdb
import msgspec
from msgspec.structs import replace as _replace

from kassa.core_ext import records as rec
from kassa.core_ext.compaction import compact, removed_counters
from kassa.core_ext.journal_archive import ArchiveReader, ArchiveUnreadable, archive_dir_of, journal_entry
from kassa.core_ext.limits import MS_PER_DAY, STATEMENT_PAGE_SIZE_DEFAULT, STATEMENT_PAGE_SIZE_MAX
from kassa.core_ext.map_size import GrowingEnvironment
from kassa.core_ext.retention import Retention, aging_key, answer_not_kept
from kassa.core_ext.model import (
    AccountView, AccrueOp, AccrueResult, AdjustOp, AdjustResult, Balance, BlockCardOp, Calculation, CalculateResult,
    CardInfo, CardResult, Code, CreateAccountOp, EventOp, EventResult, IdKind, IssueCardOp, JoinGroupOp,
    LeaveGroupOp, LineResult, Outcome, PromoCodeResult, PromoCodesOp, PromoCodesResult, Reason, RedeemOp, RedeemResult,
    MoveInOp, MoveOutOp, RelatedCreditOp, RollbackKind, RollbackOp, RollbackResult, SetAttributesOp, SetRulesOp, Shopper, Statement, SweepOp,
    SweepResult, CompactOp, TransactionView, TxnKind, rejected, store_of,
)
from kassa.core_ext.outbox import MOVE_PREFIX, OUTBOX_DB, OutboxRec, OutboxState, encode_outbox, reversed_record, work_key
from kassa.core_ext.program import parse_program
from kassa.core_ext.promo import PatternError, allowed_count, check_code, generate, parse_pattern
from kassa.core_ext.rules import Program, prorate_points

# `retained`: idempotency records past the replay window, in their small form (compaction moves
# them out of `idempotency`, so that both keep their pages full). 12 databases; a cluster adds one.
DB_NAMES = (b"accounts", b"idents", b"lots", b"holds", b"journal", b"idempotency",
            b"reversals", b"meta", b"counters", b"codes", b"aging", b"retained")
NEXT_TXN_KEY = b"next_txn_id"
RULESET_KEY = b"ruleset"  # the serving ruleset: (version, sources), shared by every worker
RULE_FILES_KEY = b"rule_files"  # the version of the rule files last adopted at a start
TOMBSTONE_DIGEST = b""
SYSTEM_ACTOR = "system"  # the journal's actor for what the ledger does by itself (expiry, debt repaid, write-off)
MAX_DBS = 16  # named databases in the environment
READERS_MAX = 512  # concurrent read transactions across all processes

_encode = msgspec.msgpack.Encoder().encode
_decode_account = rec.decode_account
_decode_ident = rec.decode_ident
_decode_lot = rec.decode_lot
_decode_hold = rec.decode_hold
_decode_txn = rec.decode_txn
_decode_reversal = rec.decode_reversal
_decode_idempotency = rec.decode_idempotency
_decode_promo_code = rec.decode_promo_code
_decode_ruleset = msgspec.msgpack.Decoder(tuple[str, dict[str, str]]).decode
_decode_ruleset_version = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw]).decode
_decode_outcome = msgspec.msgpack.Decoder(Outcome).decode
# The record classes a purchase builds, as module names: `rec.X` is a module attribute look-up
# each time, and a purchase builds one per receipt line.
_JournalLine = rec.JournalLine
_Posting = rec.Posting
_TxnRec = rec.TxnRec
_encode_txn = rec.encode_txn
_LotRec = rec.LotRec
AccrueOutcomeRec = rec.AccrueOutcomeRec
AccrueOutcomeV2 = rec.AccrueOutcomeV2
_accrue_outcome_v2 = rec.accrue_outcome_v2
_accrue_outcome_fields = rec.accrue_outcome_fields
RetainedRec = rec.RetainedRec
AccrueOutcomeRare = rec.AccrueOutcomeRare
NO_RARE = AccrueOutcomeRare()


# Enum members the hot paths compare and store, as C ints: an IntEnum attribute lookup costs about
# 0.1 us, and a purchase made a dozen of them.
cdef int CODE_OK = Code.OK
cdef int LOT_PENDING = rec.LotState.PENDING, LOT_ACTIVE = rec.LotState.ACTIVE, LOT_EXPIRED = rec.LotState.EXPIRED
cdef int HOLD_LIVE = rec.HoldState.LIVE, HOLD_CAPTURED = rec.HoldState.CAPTURED
cdef int HOLD_VOIDED = rec.HoldState.VOIDED, HOLD_EXPIRED = rec.HoldState.EXPIRED
cdef int ID_ACCOUNT = IdKind.ACCOUNT, ID_CARD = IdKind.CARD, ID_PHONE = IdKind.PHONE
cdef int TXN_ACCRUE = TxnKind.ACCRUE, TXN_REDEEM = TxnKind.REDEEM, TXN_HOLD = TxnKind.HOLD
cdef int TXN_ROLLBACK = TxnKind.ROLLBACK, TXN_ADJUST = TxnKind.ADJUST, TXN_EXPIRE = TxnKind.EXPIRE
cdef int TXN_CREATE_ACCOUNT = TxnKind.CREATE_ACCOUNT, TXN_ISSUE_CARD = TxnKind.ISSUE_CARD
cdef int TXN_BLOCK_CARD = TxnKind.BLOCK_CARD, TXN_SET_ATTRIBUTES = TxnKind.SET_ATTRIBUTES
cdef int TXN_JOIN_GROUP = TxnKind.JOIN_GROUP, TXN_LEAVE_GROUP = TxnKind.LEAVE_GROUP
cdef int TXN_DEBT_REPAID = TxnKind.DEBT_REPAID, TXN_EVENT = TxnKind.EVENT, TXN_WRITE_OFF = TxnKind.WRITE_OFF


cdef inline bytes id_key(object number):
    return (<long long>number).to_bytes(8, "big")


cpdef bytes ident_key(int kind, str value):
    return (b"c:" if kind == ID_CARD else b"p:") + value.encode()


class LedgerError(Exception):
    """An operating failure of the ledger (not a business rejection)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# One table from LMDB's errors to ours, each with a hint a person can act on.
LMDB_ERRORS = {
    lmdb.MapFullError: (Code.RESOURCE_EXHAUSTED,
                        "ledger map is full; raise ledger.map_size_bytes_max in the config"),
    lmdb.DiskError: (Code.RESOURCE_EXHAUSTED, "ledger disk is full or failing; free space under ledger.path"),
    lmdb.ReadersFullError: (Code.RESOURCE_EXHAUSTED, "too many ledger readers; raise ledger.readers_max"),
}


# ENOSPC, EDQUOT from a commit; EIO too: LMDB reports a short write on a full disk as EIO.
NO_SPACE_MESSAGES = ("No space left on device", "Disk quota exceeded", "Input/output error")


def ledger_error(error):
    """Our error for an LMDB error, or None for one that is a bug."""
    for kind, (code, hint) in LMDB_ERRORS.items():
        if isinstance(error, kind):
            return LedgerError(code, f"{hint} ({error})")
    if any(message in str(error) for message in NO_SPACE_MESSAGES):
        return LedgerError(Code.RESOURCE_EXHAUSTED,
                           f"the ledger's disk is full or failing; free space under ledger.path ({error})")
    return None


include "batch.pxi"  # _Batch (a write transaction) and _ReadView (a read one)


cdef class Ledger:
    """One LMDB environment's ledger. The class holds the environment and the group-commit entry
    (`apply`); what an operation does lives in the file of its concern, as functions of the ledger."""

    def __init__(self, path, program, long long map_size_bytes, long long hold_ttl_s, bint sync=True,
                 int readers_max=READERS_MAX, long long map_size_bytes_max=0, long long disk_reserve_bytes=0):
        """The map starts at `map_size_bytes` (or the size it grew to before) and grows by itself up
        to `map_size_bytes_max` (0: it does not grow) and the free disk less `disk_reserve_bytes`."""
        os.makedirs(path, exist_ok=True)
        self.path = str(path)
        self.program = program
        self.hold_ttl_ms = hold_ttl_s * 1000
        self.first_txn_id = 1
        # A commit syncs its data pages before it writes the meta page that points at them, but not
        # the meta page itself (MDB_NOMETASYNC): that sync is `apply`'s, after LMDB's writer lock is
        # released, so another process's group commits while this one waits for the disk. The
        # answers go out only after it, so an answered commit is on disk; a crash before it loses
        # only unanswered work and never the database's integrity (LMDB keeps the pages of the last
        # two commits until a later commit has synced).
        self._sync = sync
        self.archive = ArchiveReader(archive_dir_of(self.path))
        self.retention = Retention()
        self.env = GrowingEnvironment(
            lmdb.open(self.path, map_size=map_size_bytes, max_dbs=MAX_DBS, sync=sync, metasync=False,
                      readahead=False, max_readers=readers_max), map_size_bytes_max, disk_reserve_bytes)
        self.env.reader_check()  # reclaim slots of readers that died
        self.dbs = {name.decode(): self.env.open_db(name) for name in DB_NAMES}
        self.dbs["outbox"] = self.env.open_db(OUTBOX_DB)  # partitions only; tools that list DB_NAMES skip it
        self._handlers = {
            RedeemOp: _redeem, RollbackOp: _rollback,
            CreateAccountOp: _create_account, IssueCardOp: _issue_card, BlockCardOp: _block_card,
            SetAttributesOp: _set_attributes, AdjustOp: _adjust, JoinGroupOp: _join_group,
            LeaveGroupOp: _leave_group, EventOp: _event, PromoCodesOp: _promo_codes,
            RelatedCreditOp: _related_credit, MoveOutOp: _move_out, MoveInOp: _move_in,
        }

    def close(self):
        self.env.close()

    def stats(self):
        """Sizes for metrics and `kassa stats`: cheap LMDB page statistics, no scan."""
        info = self.env.info()
        with self.env.begin() as txn:
            accounts = txn.stat(self.dbs["accounts"])["entries"]
            transactions = txn.stat(self.dbs["journal"])["entries"]
        return {"ledger_bytes": (info["last_pgno"] + 1) * self.env.stat()["psize"], "map_bytes": info["map_size"],
                "map_limit_bytes": self.env.limit_bytes(), "accounts": accounts, "transactions": transactions}

    def reader_check(self):
        """Free the reader slots of processes that died inside a read; returns how many."""
        return self.env.reader_check()

    def apply(self, list ops, long long now_ms, take=None, meta=()):
        """Apply `ops` in order in one write transaction; one `Outcome` per operation.

        `meta`, (key, value) pairs, are written into the `meta` database in the same transaction,
        so that what they say (a replica's applied log position) commits with the group.

        `take`, if given, is called once LMDB's writer lock is held and returns (operations,
        now_ms): they join the end of `ops` (in place, so the caller sees what was taken) and the
        group is applied at that time. Operations that arrived while another process held the
        lock then share this commit instead of waiting for the next one.

        An unexpected failure of one operation aborts the group; the operations are then applied
        one per transaction, so that the failure stays with the operation that caused it."""
        try:
            return self._apply_group(ops, now_ms, take, meta)
        except LedgerError:
            raise
        except Exception:
            if len(ops) <= 1:  # nothing to share out: before `take` ran, or one operation
                raise
        outcomes = [self._apply_alone(op, self._now_ms) for op in ops]
        if meta:  # after the last operation's own transaction: the pairs still follow the group
            self._apply_group([], self._now_ms, None, meta)
        return outcomes

    def _apply_alone(self, op, long long now_ms):
        try:
            return self._apply_group([op], now_ms)[0]
        except LedgerError as error:
            return rejected(error.code, str(error))
        except Exception as error:
            return rejected(Code.INTERNAL, f"internal error: {type(error).__name__}: {error}")

    def _apply_group(self, list ops, long long now_ms, take=None, meta_pairs=()):
        self._now_ms = now_ms
        try:
            with self.env.begin(write=True) as txn:
                if take is not None:
                    taken, now_ms = take()
                    ops.extend(taken)
                self._now_ms = now_ms
                meta = self.dbs["meta"]
                _follow_ruleset(self, txn.get(RULESET_KEY, db=meta))
                stored = txn.get(NEXT_TXN_KEY, db=meta)
                batch = _Batch(txn, self.dbs, now_ms, int.from_bytes(stored, "big") if stored else self.first_txn_id)
                outcomes = [self._apply_one(batch, op) for op in ops]
                txn.put(NEXT_TXN_KEY, id_key(batch.next_id), db=meta)
                for key, value in meta_pairs:
                    txn.put(key, value, db=meta)
                self.last_group_calls = (batch.reads, batch.writes)
            if self._sync:
                self.env.sync(True)  # the meta page, outside the writer lock (see __init__)
            if self._switched is not None:
                self.program, self._switched = self._switched, None
            return outcomes
        except lmdb.Error as error:
            if isinstance(error, lmdb.MapFullError):  # the group was aborted whole: none of it is written
                error = self.env.grow()  # None: the map grew; else why it cannot (its maximum, the disk)
                if error is None:
                    # all of it, `take`n ones included, once more
                    return self._apply_group(ops, self._now_ms, None, meta_pairs)
            mapped = ledger_error(error)
            if mapped is None:
                raise
            raise mapped from error

    cdef object _apply_one(self, _Batch batch, op):
        kind = type(op)
        if kind is SweepOp:
            return _sweep(self, batch, op)
        if kind is SetRulesOp:
            return _set_rules(self, batch, op)
        if kind is CompactOp:
            return compact(batch.txn, batch.dbs, batch.now_ms, op, self.program)
        if getattr(op, "occurred_at_ms", 0):  # a request that says when it was made may be too old to check
            refusal = self.retention.age_refusal(op, batch.now_ms)
            if refusal is not None:
                return refusal
        cdef bytes request_key = op.request_id.encode()
        stored = batch.get("idempotency", request_key)
        if stored is None:  # past the replay window, its record is in `retained` (compaction)
            stored = batch.get("retained", request_key)
        if stored is not None:
            record = _decode_idempotency(stored)
            if not _spared_by_tombstone(record, op):
                return _replay(self, batch, op, record)
        batch.actor = op.actor
        if kind is AccrueOp:  # the hot one: a C call, not through the table
            outcome, txn_id = _accrue(self, batch, op)
        else:
            handler = self._handlers.get(kind)
            if handler is None:
                raise TypeError(f"not a ledger operation: {kind.__name__}")
            outcome, txn_id = handler(self, batch, op)
        if outcome.code == CODE_OK or outcome.code == Code.FAILED_PRECONDITION:
            # Business outcomes are final: a retry replays them, never flips them.
            batch.put("idempotency", request_key, _idempotency_record(op.digest, txn_id, outcome, batch.now_ms))
            if txn_id == 0:  # no journal entry dates it: the aging index does, for compaction
                batch.put("aging", aging_key(batch.now_ms, request_key), b"")
        return outcome

    def adopt_rule_files(self, long long now_ms):
        """At start: when the rule files this ledger was opened with (`program`) differ from the
        ones it last adopted, store them as the serving ruleset for every worker. True if so."""
        with self.env.begin() as txn:
            seen = txn.get(RULE_FILES_KEY, db=self.dbs["meta"])
        if seen is not None and seen.decode() == self.program.version:
            return False
        spec = self.program.spec
        op = SetRulesOp(tuple(spec.sources.items()), spec.version, files=True)
        (outcome,) = self.apply([op], now_ms)
        if outcome.code != CODE_OK:
            raise LedgerError(outcome.code, outcome.message)
        return True

    def refresh_program(self):
        """Switch to the ruleset stored by another worker's ReloadRules; True when it switched."""
        with self.env.begin() as txn:
            return _follow_ruleset(self, txn.get(RULESET_KEY, db=self.dbs["meta"]))

    def _reader(self, txn):
        return _ReadView(txn, self.dbs)

    def calculate(self, query, long long now_ms):
        try:
            return self._calculate(query, now_ms)
        except lmdb.Error as error:
            return _read_refusal(error)

    def _calculate(self, query, long long now_ms):
        with self.env.begin() as txn:
            get = self._reader(txn)
            member, card, rejection = _find_customer(self, get, query.customer)
            if rejection is not None:
                return rejection
            account = _settle(self, get, _pool(self, get, member), now_ms)
            balance = _balance(self, get, account, now_ms)
            calculation, _ = _evaluate(self, get, member, card, query.receipt, now_ms,
                                       balance.available, query.redeem_points, query.explain)
        if query.redeem_points:
            rejection = _redeem_rejection(self, balance, query.redeem_points, calculation.redeemable_points)
            if rejection is not None:
                return rejection
        return Outcome(CODE_OK, body=CalculateResult(account.account_id, calculation, balance))

    def account(self, customer, long long now_ms):
        try:
            return self._account(customer, now_ms)
        except lmdb.Error as error:
            return _read_refusal(error)

    def _account(self, customer, long long now_ms):
        with self.env.begin() as txn:
            get = self._reader(txn)
            account, rejection = _find_account(self, get, customer)
            if rejection is not None:
                return rejection
            return Outcome(CODE_OK, body=_account_view(self, get, account, now_ms))

    def statement(self, customer, page_size, before_id):
        """Newest first, `page_size` entries older than `before_id` (0: from the newest)."""
        try:
            return self._statement(customer, min(page_size or STATEMENT_PAGE_SIZE_DEFAULT, STATEMENT_PAGE_SIZE_MAX),
                                   before_id)
        except lmdb.Error as error:
            return _read_refusal(error)
        except ArchiveUnreadable as error:  # the statement continues in a segment that is missing or damaged
            return rejected(Code.FAILED_PRECONDITION, f"the statement continues in the journal archive, "
                            f"which cannot be read here ({error}); restore the archive directory and retry")

    def _statement(self, customer, int page_size, long long before_id):
        with self.env.begin() as txn:
            get = self._reader(txn)
            account, rejection = _find_account(self, get, customer)
            if rejection is not None:
                return rejection
            me = account.account_id
            next_id = account.last_txn_id
            if before_id:
                entry = journal_entry(txn, self.dbs, self.archive, before_id)
                if entry is None or me not in (entry.account_id, entry.member_id):
                    return rejected(Code.INVALID_ARGUMENT, f"page_token: not a page of account '{me}'")
                next_id = _previous_of(entry, me)
            views = []
            while next_id and len(views) <= page_size:
                entry = journal_entry(txn, self.dbs, self.archive, next_id)
                views.append(_view(entry, me))
                next_id = _previous_of(entry, me)
        next_before_id = views[page_size - 1].transaction_id if len(views) > page_size else 0
        return Outcome(CODE_OK, body=Statement(account.account_id, tuple(views[:page_size]), next_before_id))

    def verify(self, long long now_ms):
        """Check the invariants of DESIGN §4 (1-4) over the whole ledger; returns a list of
        violations, each a string naming the account or record, what was expected, what was found."""
        from kassa.core_ext.verify import check_ledger
        with self.env.begin() as txn:
            return check_ledger(txn, self.dbs, now_ms, archive_dir_of(self.path))

    def raw_transaction(self):
        """A read transaction and the named databases, for tools (verify, backup, tests)."""
        return self.env.begin(), self.dbs


def _read_refusal(error):
    """A read that LMDB refused (readers full, ...) as an outcome; a bug stays an exception."""
    mapped = ledger_error(error)
    if mapped is None:
        raise error
    return rejected(mapped.code, str(mapped))


def _view(entry, str account_id):
    """`entry` as the statement of `account_id` shows it."""
    return TransactionView(entry.txn_id, entry.request_id, entry.kind, entry.created_at_ms, entry.earned,
                           entry.redeemed + entry.captured, entry.held, entry.clawed, entry.restored,
                           entry.expired, entry.reverses, entry.store_id, entry.receipt_no, entry.total_minor,
                           entry.member_id, entry.reason, entry.operator_id, entry.adjusted, entry.actor,
                           entry.forgiven, rec.statement_change(entry, account_id))


# What each operation does, one concern a file: functions of the ledger (`Ledger self` first).
include "customers.pxi"
include "lots.pxi"
include "journal.pxi"
include "counters.pxi"
include "promo_codes.pxi"
include "groups.pxi"
include "rulesets.pxi"
include "tiers.pxi"
include "purchases.pxi"
include "events.pxi"
include "rollbacks.pxi"
include "moves.pxi"
