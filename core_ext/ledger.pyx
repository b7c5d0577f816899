# cython: language_level=3
"""The points ledger over LMDB: accounts, identifiers, lots, holds, journal, idempotency.

`Ledger.apply(ops, now_ms)` applies a whole batch of operations in one LMDB write transaction and
one synced commit; each operation gets its own `Outcome`. Every handler checks everything before it
writes anything, so a refused operation leaves no trace in the batch but its idempotency record.
Reads (`calculate`, `balance`, `account`, `statement`) run in read transactions and settle time
virtually: an expired lot or hold never counts, whether or not a write has settled it yet.
"""

import os

import lmdb
import msgspec
from msgspec.structs import replace as _replace

from kassa.core_ext import records as rec
from kassa.core_ext.limits import MS_PER_DAY, STATEMENT_PAGE_SIZE_DEFAULT, STATEMENT_PAGE_SIZE_MAX
from kassa.core_ext.map_size import GrowingEnvironment
from kassa.core_ext.model import (
    AccountView, AccrueOp, AccrueResult, AdjustOp, AdjustResult, Balance, BlockCardOp, Calculation, CalculateResult,
    CardInfo, CardResult, Code, CreateAccountOp, EventOp, EventResult, IdKind, IssueCardOp, JoinGroupOp,
    LeaveGroupOp, LineResult, Outcome, PromoCodeResult, PromoCodesOp, PromoCodesResult, Reason, RedeemOp, RedeemResult,
    RollbackKind, RollbackOp, RollbackResult, SetAttributesOp, SetRulesOp, Shopper, Statement, SweepOp,
    SweepResult, TransactionView, TxnKind, rejected, store_of,
)
from kassa.core_ext.program import parse_program
from kassa.core_ext.promo import PatternError, allowed_count, check_code, generate, parse_pattern
from kassa.core_ext.rules import Program, prorate_points

DB_NAMES = (b"accounts", b"idents", b"lots", b"holds", b"journal", b"idempotency",
            b"reversals", b"meta", b"counters", b"codes")
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
AccrueOutcomeRec = rec.AccrueOutcomeRec
AccrueOutcomeRare = rec.AccrueOutcomeRare
NO_RARE = AccrueOutcomeRare()
IDEMPOTENCY_ACCRUE_V1_BYTE = bytes([rec.IDEMPOTENCY_ACCRUE_V1])


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


def ident_key(int kind, str value):
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


cdef class _Batch:
    """The state of one write transaction: the txn, its databases, the clock and the next id."""

    cdef readonly object txn
    cdef readonly dict dbs
    cdef readonly long long now_ms
    cdef readonly long long next_id
    cdef public str actor  # of the operation being applied, stamped on its journal entries
    cdef dict cursors  # one per database, opened when first used
    cdef readonly long long reads  # LMDB gets made, hits and misses: what the bench and tests count
    cdef readonly long long writes  # LMDB puts and appends

    def __init__(self, txn, dict dbs, long long now_ms, long long next_id):
        self.actor = ""
        self.txn = txn
        self.dbs = dbs
        self.now_ms = now_ms
        self.next_id = next_id
        self.cursors = {}

    cdef object _cursor(self, str name):
        """Reads and writes go through a cursor per database: py-lmdb's cursor calls take no
        keyword arguments, and cost about half of the transaction's (0.13 against 0.27-0.33 us)."""
        cursor = self.cursors.get(name)
        if cursor is None:
            cursor = self.cursors[name] = self.txn.cursor(self.dbs[name])
        return cursor

    cpdef get(self, str name, bytes key):
        self.reads += 1
        return self._cursor(name).get(key)

    cpdef put(self, str name, bytes key, bytes value):
        self.writes += 1
        self._cursor(name).put(key, value)

    cpdef append(self, str name, bytes key, bytes value):
        """Put a key greater than every key in `name` (ids grow): LMDB appends without a search."""
        self.writes += 1
        self._cursor(name).put(key, value, True, True, True)  # dupdata, overwrite, append

    cpdef long long take_id(self):
        self.next_id += 1
        return self.next_id - 1


cdef class _ReadView:
    """A read transaction's getter, with the lots a read-only settle changed laid over it, so
    that what follows the settle (the next expiry) sees the lots as the settle left them."""

    cdef object txn
    cdef dict dbs
    cdef dict lots

    def __init__(self, txn, dict dbs):
        self.txn = txn
        self.dbs = dbs
        self.lots = {}

    def __call__(self, str name, bytes key):
        if name == "lots":
            changed = self.lots.get(key)
            if changed is not None:
                return changed
        return self.txn.get(key, db=self.dbs[name])


cdef class Ledger:
    cdef readonly object env
    cdef readonly str path
    cdef dict dbs
    cdef public object program
    cdef readonly long long hold_ttl_ms
    cdef dict _handlers
    cdef object _switched  # a ruleset written by this group, served once it commits
    # (LMDB gets, puts) the operations of the last committed group made (None before one): what a
    # purchase costs in LMDB calls, for the bench and the tests
    cdef readonly tuple last_group_calls
    cdef object _counted_program  # the program `_counted` was built for
    cdef dict _counted  # campaign id -> (amount limits [(period, cap)], uses cap), of `program`
    cdef long long _now_ms  # of the group being applied
    cdef bint _sync  # commits are durable before `apply` returns
    # Partitions (core_ext/partitions.py): the first transaction id of a fresh ledger (the partition
    # in its top bits), and the bank of shared counters (None: every counter is this ledger's own).
    cdef public long long first_txn_id
    cdef public object escrow

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
        self.env = GrowingEnvironment(
            lmdb.open(self.path, map_size=map_size_bytes, max_dbs=MAX_DBS, sync=sync, metasync=False,
                      readahead=False, max_readers=readers_max), map_size_bytes_max, disk_reserve_bytes)
        self.env.reader_check()  # reclaim slots of readers that died
        self.dbs = {name.decode(): self.env.open_db(name) for name in DB_NAMES}
        self._handlers = {
            AccrueOp: self._accrue, RedeemOp: self._redeem, RollbackOp: self._rollback,
            CreateAccountOp: self._create_account, IssueCardOp: self._issue_card, BlockCardOp: self._block_card,
            SetAttributesOp: self._set_attributes, AdjustOp: self._adjust, JoinGroupOp: self._join_group,
            LeaveGroupOp: self._leave_group, EventOp: self._event, PromoCodesOp: self._promo_codes,
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

    # -----------------------------------------------------------------------------------------
    # Writes

    def apply(self, list ops, long long now_ms, take=None):
        """Apply `ops` in order in one write transaction; one `Outcome` per operation.

        `take`, if given, is called once LMDB's writer lock is held and returns (operations,
        now_ms): they join the end of `ops` (in place, so the caller sees what was taken) and the
        group is applied at that time. Operations that arrived while another process held the
        lock then share this commit instead of waiting for the next one.

        An unexpected failure of one operation aborts the group; the operations are then applied
        one per transaction, so that the failure stays with the operation that caused it."""
        try:
            return self._apply_group(ops, now_ms, take)
        except LedgerError:
            raise
        except Exception:
            if len(ops) <= 1:  # nothing to share out: before `take` ran, or one operation
                raise
        return [self._apply_alone(op, self._now_ms) for op in ops]

    def _apply_alone(self, op, long long now_ms):
        try:
            return self._apply_group([op], now_ms)[0]
        except LedgerError as error:
            return rejected(error.code, str(error))
        except Exception as error:
            return rejected(Code.INTERNAL, f"internal error: {type(error).__name__}: {error}")

    def _apply_group(self, list ops, long long now_ms, take=None):
        self._now_ms = now_ms
        try:
            with self.env.begin(write=True) as txn:
                if take is not None:
                    taken, now_ms = take()
                    ops.extend(taken)
                self._now_ms = now_ms
                meta = self.dbs["meta"]
                self._follow_ruleset(txn.get(RULESET_KEY, db=meta))
                stored = txn.get(NEXT_TXN_KEY, db=meta)
                batch = _Batch(txn, self.dbs, now_ms, int.from_bytes(stored, "big") if stored else self.first_txn_id)
                outcomes = [self._apply_one(batch, op) for op in ops]
                txn.put(NEXT_TXN_KEY, id_key(batch.next_id), db=meta)
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
                    return self._apply_group(ops, self._now_ms)  # all of it, `take`n ones included, once more
            mapped = ledger_error(error)
            if mapped is None:
                raise
            raise mapped from error

    def _apply_one(self, _Batch batch, op):
        kind = type(op)
        if kind is SweepOp:
            return self._sweep(batch, op)
        if kind is SetRulesOp:
            return self._set_rules(batch, op)
        stored = batch.get("idempotency", op.request_id.encode())
        if stored is not None:
            record = _decode_idempotency(stored)
            if not _spared_by_tombstone(record, op):
                return self._replay(batch, op, record)
        batch.actor = op.actor
        handler = self._handlers.get(kind)
        if handler is None:
            raise TypeError(f"not a ledger operation: {kind.__name__}")
        outcome, txn_id = handler(batch, op)
        if outcome.code == CODE_OK or outcome.code == Code.FAILED_PRECONDITION:
            # Business outcomes are final: a retry replays them, never flips them.
            batch.put("idempotency", op.request_id.encode(), _idempotency_record(op.digest, txn_id, outcome))
        return outcome

    def _replay(self, _Batch batch, op, record):
        if record.digest == TOMBSTONE_DIGEST:
            return rejected(Code.FAILED_PRECONDITION,
                            f"request_id '{op.request_id}' was rolled back before it arrived",
                            Reason.ROLLED_BACK_BEFORE_ARRIVAL)
        if record.digest != op.digest:
            return rejected(Code.ALREADY_EXISTS,
                            f"request_id '{op.request_id}' was used before with a different payload")
        if type(record) is AccrueOutcomeRec:
            return _rebuilt_accrue(record, _decode_txn(batch.get("journal", id_key(record.txn_id))))
        return _decode_outcome(record.outcome)

    # -- customers ------------------------------------------------------------------------------

    def _find_account(self, get, customer):
        """(account, None) or (None, rejection). `get(db_name, key)` reads in any transaction."""
        account, _, rejection = self._find_customer(get, customer)
        return account, rejection

    def _find_customer(self, get, customer):
        """(account, card, None) or (None, None, rejection): the presented card's record (None
        without a card) comes from the same read that found the account, not from a second one."""
        ident = None
        if customer.kind == ID_ACCOUNT:
            account_id = customer.value
        else:
            stored = get("idents", ident_key(customer.kind, customer.value))
            if stored is None:
                field = "card" if customer.kind == ID_CARD else "phone"
                return None, None, rejected(Code.NOT_FOUND, f"customer.{field}: no account has {field} '{customer.value}'")
            ident = _decode_ident(stored)
            account_id = ident.account_id
        stored = get("accounts", account_id.encode())
        if stored is None:
            return None, None, rejected(Code.NOT_FOUND, f"customer.account_id: no account '{account_id}'")
        return _decode_account(stored), ident if customer.kind == ID_CARD else None, None

    def _pool(self, get, member):
        """The account whose lots a member's operations use: the group's parent, or itself."""
        if not member.parent_id:
            return member
        return _decode_account(get("accounts", member.parent_id.encode()))

    def _load_account(self, get, str account_id):
        stored = get("accounts", account_id.encode())
        return None if stored is None else _decode_account(stored)

    def _touch(self, account, long long now_ms):
        """Record activity: it postpones the inactivity burn."""
        account.last_activity_at_ms = now_ms
        if self.program.inactivity_burn_ms:
            self._schedule(account, now_ms + self.program.inactivity_burn_ms)

    def _save_account(self, _Batch batch, account):
        batch.put("accounts", account.account_id.encode(), _encode(account))

    def _journal(self, _Batch batch, entry, account, member=None):
        """Append `entry` and link it into the statement of `account` (and of the group `member`
        who made it): each account keeps its newest entry's id, each entry the previous one's.
        Saves the account objects, which the caller keeps using."""
        entry.actor = SYSTEM_ACTOR if entry.kind in (TXN_EXPIRE, TXN_DEBT_REPAID, TXN_WRITE_OFF) else batch.actor
        entry.prev_id = account.last_txn_id
        account.last_txn_id = entry.txn_id
        self._save_account(batch, account)
        if entry.member_id:
            entry.member_prev_id = member.last_txn_id
            member.last_txn_id = entry.txn_id
            self._save_account(batch, member)
        batch.append("journal", id_key(entry.txn_id), _encode(entry))

    # -- time: activation, expiry, hold expiry ----------------------------------------------------

    def _settle(self, get, account, long long now_ms, batch=None):
        """Bring `account` to `now_ms`: activate due lots, expire due lots and holds.

        With `batch` the changes are written (and expiry journaled); without, `account` is a
        private copy updated for reading only."""
        if batch is not None and not account.lots_by_expiry:
            self._order_lots(get, account)
        if account.next_change_at_ms == 0 or now_ms < account.next_change_at_ms:
            return account
        expired_postings = []
        expired = 0
        repaid_postings = []
        repaid = 0
        open_lot_ids = []
        burn_ms = self.program.inactivity_burn_ms
        burn = burn_ms and account.last_activity_at_ms and now_ms >= account.last_activity_at_ms + burn_ms
        if burn:
            account.last_activity_at_ms = 0
            if batch is not None:
                account.burnt_below_lot_id = batch.next_id
        for lot_id in account.open_lot_ids:
            lot = _decode_lot(get("lots", id_key(lot_id)))
            changed = False
            if burn and lot.state == LOT_PENDING:
                lot.state = LOT_ACTIVE  # burnt below with the active ones
                account.pending -= lot.remaining
                account.active += lot.remaining
                changed = True
            if lot.state == LOT_PENDING and lot.activates_at_ms <= now_ms:
                lot.state = LOT_ACTIVE
                account.pending -= lot.remaining
                account.active += lot.remaining
                changed = True
                # Points that become active pay clawback debt first, as points earned active do.
                repay = min(account.debt, lot.remaining)
                if repay > 0:
                    lot.remaining -= repay
                    account.active -= repay
                    account.debt -= repay
                    repaid += repay
                    repaid_postings.append(rec.Posting(lot_id, -repay))
            if lot.state == LOT_ACTIVE and (burn or (lot.expires_at_ms and lot.expires_at_ms <= now_ms)):
                lot.state = LOT_EXPIRED
                account.active -= lot.remaining
                expired += lot.remaining
                if lot.remaining:
                    expired_postings.append(rec.Posting(lot_id, -lot.remaining))
                lot.remaining = 0
                changed = True
            if lot.state != LOT_EXPIRED and (lot.remaining or lot.state == LOT_PENDING):
                open_lot_ids.append(lot_id)
            if changed and batch is not None:
                batch.put("lots", id_key(lot_id), _encode(lot))
            elif changed and type(get) is _ReadView:
                (<_ReadView>get).lots[id_key(lot_id)] = _encode(lot)
        account.open_lot_ids = open_lot_ids
        live_hold_ids = []
        for hold_id in account.live_hold_ids:
            hold = _decode_hold(get("holds", id_key(hold_id)))
            if hold.expires_at_ms <= now_ms:
                hold.state = HOLD_EXPIRED
                account.held -= hold.amount
                if batch is not None:
                    batch.put("holds", id_key(hold_id), _encode(hold))
            else:
                live_hold_ids.append(hold_id)
        account.live_hold_ids = live_hold_ids
        account.next_change_at_ms = self._next_change(get, account)
        if batch is not None:
            # Saved now: a refusal after the settle must not leave the lots and holds it changed
            # out of step with the account's totals.
            self._save_account(batch, account)
            if repaid:
                self._journal(batch, rec.TxnRec(batch.take_id(), TXN_DEBT_REPAID, "", account.account_id,
                                                now_ms, debt_delta=-repaid, postings=repaid_postings), account)
            if expired:
                entry = rec.TxnRec(batch.take_id(), TXN_EXPIRE, "", account.account_id, now_ms,
                                   expired=expired, postings=expired_postings)
                self._journal(batch, entry, account)
        return account

    @staticmethod
    def _schedule(account, long long at_ms):
        """Make sure a settle runs by `at_ms`. `next_change_at_ms` may be early, never late: an
        early settle finds nothing due and recomputes it."""
        if at_ms and (account.next_change_at_ms == 0 or at_ms < account.next_change_at_ms):
            account.next_change_at_ms = at_ms

    def _next_change(self, get, account):
        times = []
        for lot_id in account.open_lot_ids:
            lot = _decode_lot(get("lots", id_key(lot_id)))
            if lot.state == LOT_PENDING:
                times.append(lot.activates_at_ms)
            elif lot.expires_at_ms:
                times.append(lot.expires_at_ms)
        for hold_id in account.live_hold_ids:
            times.append(_decode_hold(get("holds", id_key(hold_id))).expires_at_ms)
        if self.program.inactivity_burn_ms and account.last_activity_at_ms:
            times.append(account.last_activity_at_ms + self.program.inactivity_burn_ms)
        return min(times) if times else 0

    def _balance(self, get, account, long long expiry_at_ms=0):
        """The account's balance; with `expiry_at_ms` (now) also the next expiry after it, from its
        lots as a settle at that moment left them. Every balance an answer carries has it (the
        checks inside a write need only the totals): lots kept in expiry order are read only up to
        the first expiry past the next one, so a write's answer reads a lot or two, not all."""
        next_expiry_at_ms = 0
        next_expiry_points = 0
        cdef bint ordered = account.lots_by_expiry
        for lot_id in (account.open_lot_ids if expiry_at_ms else ()):
            lot = _decode_lot(get("lots", id_key(lot_id)))
            if ordered and next_expiry_at_ms and lot.expires_at_ms != next_expiry_at_ms:
                break
            active = lot.state == LOT_ACTIVE or (
                lot.state == LOT_PENDING and lot.activates_at_ms <= expiry_at_ms)
            if not active or not lot.expires_at_ms or lot.expires_at_ms <= expiry_at_ms or not lot.remaining:
                continue
            if next_expiry_at_ms == 0 or lot.expires_at_ms < next_expiry_at_ms:
                next_expiry_at_ms, next_expiry_points = lot.expires_at_ms, lot.remaining
            elif lot.expires_at_ms == next_expiry_at_ms:
                next_expiry_points += lot.remaining
        active = account.active - account.debt
        return Balance(active, account.pending, account.held, active - account.held, account.debt,
                       next_expiry_at_ms, next_expiry_points)

    # -- lots -------------------------------------------------------------------------------------

    def _order_lots(self, get, account):
        """Put the open lots of an account written before they were kept in order in that order."""
        lots = sorted((_decode_lot(get("lots", id_key(lot_id))) for lot_id in account.open_lot_ids),
                      key=rec.lot_expiry_order)
        account.open_lot_ids = [lot.lot_id for lot in lots]
        account.lots_by_expiry = True

    def _open_lot(self, get, account, lot):
        """Add `lot` to the account's open lots, in expiry order: a new lot usually expires last
        and goes at the end; one that does not (a shorter own lifetime, a lot opened again) is
        placed by a binary search."""
        open_lot_ids = account.open_lot_ids
        if not account.lots_by_expiry:
            open_lot_ids.append(lot.lot_id)
            return
        key = rec.lot_expiry_order(lot)
        order = lambda lot_id: rec.lot_expiry_order(_decode_lot(get("lots", id_key(lot_id))))
        cdef Py_ssize_t low = 0, high = len(open_lot_ids), middle
        if high and key > order(open_lot_ids[high - 1]):
            low = high
        while low < high:
            middle = (low + high) // 2
            if order(open_lot_ids[middle]) < key:
                low = middle + 1
            else:
                high = middle
        open_lot_ids.insert(low, lot.lot_id)

    def _consume(self, _Batch batch, account, long long points):
        """Take `points` from ACTIVE lots, earliest expiry first; returns the postings.
        The caller has checked that the lots hold enough."""
        lots = [_decode_lot(batch.get("lots", id_key(lot_id))) for lot_id in account.open_lot_ids]
        lots = [lot for lot in lots if lot.state == LOT_ACTIVE and lot.remaining > 0]
        lots.sort(key=lambda lot: (lot.expires_at_ms == 0, lot.expires_at_ms, lot.lot_id))
        postings = []
        for lot in lots:
            if points == 0:
                break
            take = min(points, lot.remaining)
            lot.remaining -= take
            points -= take
            postings.append(rec.Posting(lot.lot_id, -take))
            batch.put("lots", id_key(lot.lot_id), _encode(lot))
            if lot.remaining == 0:
                account.open_lot_ids.remove(lot.lot_id)
            account.active -= take
        if points:
            raise AssertionError(f"account {account.account_id}: lots short by {points} after the check")
        return postings

    def _repay_debt(self, _Batch batch, account, lot, list postings):
        """New active points pay clawback debt first, so the debt cannot outlive the points that
        covered it (and come back when they expire). Returns the points repaid."""
        repaid = min(account.debt, lot.remaining) if lot.state == LOT_ACTIVE else 0
        if repaid <= 0:
            return 0
        lot.remaining -= repaid
        account.active -= repaid
        account.debt -= repaid
        if lot.remaining == 0:
            account.open_lot_ids.remove(lot.lot_id)
        postings.append(rec.Posting(lot.lot_id, -repaid))
        batch.put("lots", id_key(lot.lot_id), _encode(lot))
        return repaid

    def _earn(self, _Batch batch, account, long long txn_id, long long points, long long activates_at_ms,
              long long expires_at_ms, list postings):
        """Put earned points in a lot: the account's newest lot when it activates and expires at
        the same moments (the same day's purchases), else a new lot with id `txn_id`."""
        state = LOT_PENDING if activates_at_ms > batch.now_ms else LOT_ACTIVE
        if account.last_lot_id:
            lot = _decode_lot(batch.get("lots", id_key(account.last_lot_id)))
            # An active lot's activation is past: only its expiry tells lots apart.
            same_activation = state == LOT_ACTIVE or lot.activates_at_ms == activates_at_ms
            if lot.state == state and same_activation and lot.expires_at_ms == expires_at_ms:
                if lot.remaining == 0 and state == LOT_ACTIVE:
                    self._open_lot(batch.get, account, lot)  # spent to nothing, open again
                lot.amount += points
                lot.remaining += points
                if state == LOT_PENDING:
                    account.pending += points
                    self._schedule(account, activates_at_ms)
                else:
                    account.active += points
                    self._schedule(account, expires_at_ms)
                batch.put("lots", id_key(lot.lot_id), _encode(lot))
                postings.append(rec.Posting(lot.lot_id, points))
                return lot
        lot = rec.LotRec(txn_id, account.account_id, points, points, activates_at_ms, expires_at_ms, state)
        self._add_lot(batch, account, lot)
        account.last_lot_id = txn_id
        postings.append(rec.Posting(txn_id, points))
        return lot

    def _own_lot(self, _Batch batch, account, long long points, long long activates_at_ms, long long expires_at_ms,
                 list postings):
        """A lot for points with their own activation or lifetime (a campaign's), never shared; its
        id is taken from the transaction ids, so that ids keep growing with time."""
        state = LOT_PENDING if activates_at_ms > batch.now_ms else LOT_ACTIVE
        lot = rec.LotRec(batch.take_id(), account.account_id, points, points, activates_at_ms, expires_at_ms, state)
        self._add_lot(batch, account, lot)
        postings.append(rec.Posting(lot.lot_id, points))
        return lot

    def _add_lot(self, _Batch batch, account, lot):
        self._open_lot(batch.get, account, lot)
        batch.put("lots", id_key(lot.lot_id), _encode(lot))
        if lot.state == LOT_PENDING:
            account.pending += lot.remaining
            self._schedule(account, lot.activates_at_ms)
        else:
            account.active += lot.remaining
            self._schedule(account, lot.expires_at_ms)

    # -- Rulesets ---------------------------------------------------------------------------------

    def _set_rules(self, _Batch batch, op):
        """Store a validated ruleset for every worker; this one serves it once the group commits."""
        program = Program(parse_program(dict(op.sources)))
        batch.put("meta", RULESET_KEY, _encode((program.version, dict(op.sources))))
        if op.files:
            batch.put("meta", RULE_FILES_KEY, program.version.encode())
        self._switched = program
        return Outcome(CODE_OK)

    def _follow_ruleset(self, stored):
        """Serve the ruleset another worker stored, when it differs from ours."""
        if stored is None:
            return False
        if _decode_ruleset_version(stored)[0] == self.program.version:  # every group: the sources stay raw
            return False
        version, sources = _decode_ruleset(stored)
        self.program = Program(parse_program(sources))
        return True

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
            return self._follow_ruleset(txn.get(RULESET_KEY, db=self.dbs["meta"]))

    # -- What the rules read from the ledger ----------------------------------------------------------

    def _shopper(self, member, card, long long now_ms):
        category = "" if card is None else card.category
        blocked = card is not None and card.blocked
        tier, window_spend = "", 0
        if self.program.tracks_activity:
            spend, points = self._window(member, now_ms)
            window_spend = spend
            if self.program.tier_levels:
                tier = self._tier(member, now_ms, spend, points)[0]
        return Shopper(category, tier, tuple(member.segments), tuple(member.tags), tuple(member.clubs),
                       member.created_at_ms, member.birthday, member.purchases, member.lifetime_spend_minor,
                       window_spend, blocked)

    def _window(self, account, long long now_ms):
        """(spend, points earned) over the tier window, from the account's activity."""
        program = self.program
        first_day = program.local_day(now_ms) - program.tier_window_days
        spend = points = 0
        for day, day_spend, day_points in account.activity:
            if day > first_day:
                spend += day_spend
                points += day_points
        return spend, points

    def _tier(self, account, long long now_ms, spend=None, points=None):
        """(tier, next tier, missing): the level the window's metrics reach, or a granted tier
        that has not run out when it ranks higher."""
        if spend is None:
            spend, points = self._window(account, now_ms)
        tier, following, missing = self.program.tier_of(spend, points)
        for granted, until_ms, _ in account.tier_grants:
            if until_ms > now_ms and self._rank(granted) > self._rank(tier):
                tier = granted
                following, missing = self.program.next_tier_after(tier, spend, points)
        return tier, following, missing

    def _rank(self, str tier):
        """A tier's place in [tiers] file order; -1 for no tier or one the ruleset dropped."""
        for index, level in enumerate(self.program.tier_levels):
            if level.id == tier:
                return index
        return -1

    def _grant_tier(self, account, long long txn_id, calculation, long long now_ms):
        """Record the purchase's grant_tier campaigns on the account: each grant holds its tier
        until it runs out or the purchase is rolled back in full, beside the other grants."""
        grants = [grant for grant in account.tier_grants if grant[1] > now_ms]
        for applied in calculation.campaigns:
            if applied.effect == "grant_tier" and applied.campaign_id in self.program.grants:
                tier, days = self.program.grants[applied.campaign_id]
                grants.append((tier, now_ms + days * MS_PER_DAY, txn_id))
        account.tier_grants = grants

    def _record_activity(self, account, long long at_ms, long long spend, long long points):
        """Add to (or, negative, take from) the tier metrics of the local day of `at_ms`; days
        that left the window are dropped."""
        if not self.program.tracks_activity:
            return
        program = self.program
        day = program.local_day(at_ms)
        first_day = program.local_day(self._now_ms) - program.tier_window_days
        activity = account.activity
        cdef Py_ssize_t newest = len(activity) - 1  # (no negative indexes: the core is built without wraparound)
        if newest >= 0 and activity[newest][0] == day and activity[0][0] > first_day:  # the usual case: today again
            last = activity[newest]
            activity[newest] = (day, last[1] + spend, last[2] + points)
            return
        activity = [entry for entry in activity if entry[0] > first_day]
        for index, (known, day_spend, day_points) in enumerate(activity):
            if known == day:
                activity[index] = (day, day_spend + spend, day_points + points)
                break
        else:
            if day > first_day:
                activity.append((day, spend, points))
        account.activity = activity

    def _counting(self):
        """Per campaign with ledger-kept limits: its amount caps [(period, cap)] and its uses cap."""
        program = self.program
        if self._counted_program is not program:
            counted = {}
            for campaign_id, (limits, discount) in program.limits.items():
                caps = []
                for period, points_cap, minor_cap in (
                        (b"D", limits.account_day_max_points, limits.account_day_max_minor),
                        (b"W", limits.account_week_max_points, limits.account_week_max_minor),
                        (b"M", limits.account_month_max_points, limits.account_month_max_minor),
                        (b"B", limits.budget_points, limits.budget_minor)):
                    cap = minor_cap if discount else points_cap
                    if cap:
                        caps.append((period, cap))
                if caps or limits.uses_per_account:
                    counted[campaign_id] = (caps, limits.uses_per_account)
            self._counted, self._counted_program = counted, program
        return self._counted

    def _amount_keys(self, str campaign_id, list caps, str account_id, long long now_ms):
        """[(counter key, cap)] of a campaign's amount limits for this account and moment."""
        keys = []
        periods = None
        for period, cap in caps:
            if period == b"B":
                keys.append((b"B:" + campaign_id.encode(), cap))
                continue
            if periods is None:
                periods = dict(zip((b"D", b"W", b"M"), self.program.period_keys(now_ms)))
            keys.append((b"%s%d:%s\0%s" % (period, periods[period], campaign_id.encode(), account_id.encode()), cap))
        return keys

    @staticmethod
    def _use_key(str campaign_id, str account_id):
        return b"U:" + campaign_id.encode() + b"\0" + account_id.encode()

    @staticmethod
    def _counter(get, bytes key):
        stored = get("counters", key)
        return 0 if stored is None else int.from_bytes(stored, "big", signed=True)

    def _allowance(self, get, str account_id, long long now_ms):
        """A function of a campaign id: what its ledger-kept limits have left for this account now
        (None: no such limits). The core asks only about campaigns that apply otherwise."""
        counted = self._counting()
        if not counted:
            return None

        def allowance(str campaign_id):
            entry = counted.get(campaign_id)
            if entry is None:
                return None
            caps, uses_cap = entry
            if uses_cap and self._counter(get, self._use_key(campaign_id, account_id)) >= uses_cap:
                return 0
            left = None
            for key, cap in self._amount_keys(campaign_id, caps, account_id, now_ms):
                remaining = self._left(get, key, cap)
                left = remaining if left is None else min(left, remaining)
            return left
        return allowance

    def _left(self, get, bytes key, long long cap):
        """What a counter has left under its cap; a shared one's (a budget, a code's total uses)
        is this partition's slice and the bank's rest."""
        spent = self._counter(get, key)
        return cap - spent if self.escrow is None else self.escrow.left(key, cap, spent)

    def _promo_statuses(self, get, tuple codes, str account_id, long long now_ms):
        """[(code, record, refusal or "")] for the presented codes, and the campaigns they unlock."""
        statuses, unlocked = [], set()
        for code in codes:
            stored = get("codes", code.encode())
            record = None if stored is None else _decode_promo_code(stored)
            if record is None:
                refusal = "unknown"
            elif record.valid_from_ms and now_ms < record.valid_from_ms:
                refusal = "not_yet_valid"
            elif record.valid_to_ms and now_ms >= record.valid_to_ms:
                refusal = "expired"
            elif record.uses_total and self._left(get, b"C:" + code.encode(), record.uses_total) <= 0:
                refusal = "exhausted"
            elif record.uses_per_account and \
                    self._counter(get, b"c:" + code.encode() + b"\0" + account_id.encode()) >= record.uses_per_account:
                refusal = "limit_per_account"
            else:
                refusal = ""
                unlocked.add(record.campaign_id)
            statuses.append((code, record, refusal))
        return statuses, unlocked

    def _evaluate(self, get, member, card, receipt, long long now_ms, long long available,
                  long long redeem_points, bint explain=False, long long captured_points=0):
        """The program's result for this customer (`card`: the one presented, or None) and ledger
        state, and the promo codes accepted. `captured_points`: of the holds the purchase captures."""
        program = self.program
        shopper = self._shopper(member, card, now_ms)
        allowances = self._allowance(get, member.account_id, now_ms) if program.limits else None
        statuses, unlocked = ((), None)
        if receipt.promo_codes:
            statuses, unlocked = self._promo_statuses(get, receipt.promo_codes, member.account_id, now_ms)
        calculation = program.calculate(receipt, now_ms, available, redeem_points, shopper, allowances,
                                        unlocked, explain, captured_points)
        accepted = []
        if statuses:
            applied = {campaign.campaign_id for campaign in calculation.campaigns}
            results = []
            for code, record, refusal in statuses:
                if not refusal and (record.campaign_id not in applied
                                    or any(record.campaign_id == other.campaign_id for _, other in accepted)):
                    refusal = "not_applicable"
                if not refusal:
                    accepted.append((code, record))
                results.append(PromoCodeResult(code, not refusal, refusal))
            calculation = _replace(calculation, promo_codes=tuple(results))
        return calculation, accepted

    def _count(self, _Batch batch, entry, limited, accepted, str account_id):
        """Add what the campaigns with limits gave, their uses and the promo codes' uses to the
        counters, and record on `entry` how to give each back."""
        counted = self._counting()
        for campaign_id, amounts in limited:
            if campaign_id not in counted:
                continue
            caps, uses_cap = counted[campaign_id]
            keys = [key for key, _ in self._amount_keys(campaign_id, caps, account_id, batch.now_ms)]
            given = sum(amounts)
            for key in keys:
                self._add_counter(batch, entry, key, given)
            entry.limited.append(rec.LimitedUse(campaign_id, list(amounts), keys))
            if uses_cap:
                self._add_counter(batch, entry, self._use_key(campaign_id, account_id), 1)
                entry.use_keys.append(self._use_key(campaign_id, account_id))
        for code, record in accepted:
            for key in (b"C:" + code.encode(), b"c:" + code.encode() + b"\0" + account_id.encode()):
                self._add_counter(batch, entry, key, 1)
                entry.use_keys.append(key)
            entry.promo_codes.append(code)

    def _add_counter(self, _Batch batch, entry, bytes key, long long delta):
        if delta == 0:
            return
        value = self._counter(batch.get, key) + delta
        if self.escrow is not None:
            self.escrow.spend(key, value, delta)  # a shared counter's slice covers it, or raises
        batch.put("counters", key, value.to_bytes(8, "big", signed=True))
        entry.counters.append((key, delta))

    def _uncount(self, _Batch batch, entry, target, dict returns, reversal, bint complete):
        """Give back to the counters what the rolled-back part of `target` consumed: each line's
        share by returned quantity (telescoping, like the points), the uses on a full rollback."""
        for use in target.limited:
            if target.lines:
                given = 0
                for amount, line in zip(use.amounts, target.lines):
                    after = reversal.returned_qty.get(line.line_no, 0)
                    before = after - returns.get(line.line_no, 0)
                    given += amount * after // line.qty_milli - amount * before // line.qty_milli
            else:
                given = sum(use.amounts)
            for key in use.keys:
                self._add_counter(batch, entry, key, -given)
        if complete:
            for key in target.use_keys:
                self._add_counter(batch, entry, key, -1)

    # -- Events -------------------------------------------------------------------------------------

    def _event(self, _Batch batch, op):
        now_ms = batch.now_ms
        member, card, rejection = self._find_customer(batch.get, op.customer)
        if rejection is not None:
            return rejection, 0
        related = None
        if op.related is not None:
            related, rejection = self._find_account(batch.get, op.related)
            if rejection is not None:
                return rejected(rejection.code, "related." + rejection.message.split(".", 1)[1]), 0
            if related.account_id == member.account_id:
                return rejected(Code.INVALID_ARGUMENT, "related: the related customer is the event's customer"), 0
        account = self._settle(batch.get, self._pool(batch.get, member), now_ms, batch)
        self._now_ms = now_ms
        shopper = self._shopper(member, card, now_ms)
        allowances = self._allowance(batch.get, member.account_id, now_ms) if self.program.limits else None
        result = self.program.evaluate_event(op.event_type, dict(op.attributes), op.amount_minor, now_ms, shopper,
                                             allowances, related is not None)
        if result.points == 0 and result.related_points == 0:
            body = EventResult(0, member.account_id, 0, 0, "", 0, result.campaigns,
                               self._balance(batch.get, account, now_ms))
            return Outcome(CODE_OK, body=body), 0
        pooled = member.account_id != account.account_id
        txn_id = batch.take_id()
        entry = rec.TxnRec(txn_id, TXN_EVENT, op.request_id, account.account_id, now_ms, earned=result.points,
                           ruleset_version=result.ruleset_version, reason=op.event_type,
                           member_id=member.account_id if pooled else "")
        # Each entry counts its own points, so that rolling back either gives back its own share.
        self._count(batch, entry, [(cid, amounts[:1]) for cid, amounts in result.limited], (), member.account_id)
        member = self._credit_event(batch, entry, account, member, result.points, result)
        related_txn_id = 0
        if result.related_points:
            related_txn_id = self._related_event(batch, op, related, result, entry)
        if related_txn_id:  # the related customer may share the pool: show it as it is now
            account = self._load_account(batch.get, account.account_id)
        body = EventResult(txn_id, member.account_id, result.points, related_txn_id, related.account_id if related else "",
                           result.related_points, result.campaigns, self._balance(batch.get, account, now_ms))
        return Outcome(CODE_OK, body=body), txn_id

    def _related_event(self, _Batch batch, op, related, result, shared):
        """The related customer's share of an event (a referrer's points): an entry of its own,
        counted in the same counters as the event's entry `shared`."""
        now_ms = batch.now_ms
        related = self._load_account(batch.get, related.account_id)  # the event's entry may have saved it
        account = self._settle(batch.get, self._pool(batch.get, related), now_ms, batch)
        pooled = related.account_id != account.account_id
        txn_id = batch.take_id()
        entry = rec.TxnRec(txn_id, TXN_EVENT, op.request_id, account.account_id, now_ms,
                           earned=result.related_points, ruleset_version=result.ruleset_version,
                           reason=f"{op.event_type} (related)", member_id=related.account_id if pooled else "")
        keys = {use.campaign_id: use.keys for use in shared.limited}
        for campaign_id, amounts in result.limited:
            if campaign_id in keys:
                for key in keys[campaign_id]:
                    self._add_counter(batch, entry, key, amounts[1])
                entry.limited.append(rec.LimitedUse(campaign_id, [amounts[1]], keys[campaign_id]))
        self._credit_event(batch, entry, account, related, result.related_points, result)
        return txn_id

    def _credit_event(self, _Batch batch, entry, account, member, long long points, result):
        """Earn an event entry's `points` into `account`, the pool of `member` who made it; count
        them as the member's activity and journal the entry. Returns the member as saved."""
        now_ms = batch.now_ms
        if points:
            entry.new_lot = self._earn(batch, account, entry.txn_id, points, result.activate_at_ms,
                                       result.expire_at_ms, entry.postings)
            entry.debt_delta = -self._repay_debt(batch, account, entry.new_lot, entry.postings)
        self._touch(account, now_ms)
        if member.account_id != account.account_id:
            member = self._load_account(batch.get, member.account_id)
            self._touch(member, now_ms)
        else:
            member = account
        member.lifetime_earned_points += points
        self._record_activity(member, now_ms, 0, points)
        entry.activity_counted = self.program.tracks_activity
        self._journal(batch, entry, account, member)
        return member

    # -- Promo codes --------------------------------------------------------------------------------

    def _promo_codes(self, _Batch batch, op):
        campaign = next((c for c in self.program.spec.campaigns if c.id == op.campaign_id), None)
        if campaign is None:
            return rejected(Code.FAILED_PRECONDITION, f"campaign_id: no campaign '{op.campaign_id}' in ruleset "
                            f"{self.program.version}", Reason.UNKNOWN_CAMPAIGN), 0
        if not campaign.promo_code:
            return rejected(Code.FAILED_PRECONDITION, f"campaign_id: campaign '{op.campaign_id}' takes no promo "
                            f"codes (its promo_code is false)", Reason.UNKNOWN_CAMPAIGN), 0
        if op.valid_from_ms and op.valid_to_ms and op.valid_from_ms >= op.valid_to_ms:
            return rejected(Code.INVALID_ARGUMENT, "valid_to: must be after valid_from"), 0
        taken = lambda code: batch.get("codes", code.encode()) is not None
        try:
            if op.pattern:
                pattern = parse_pattern(op.pattern, op.charset)
                codes = generate(pattern, op.count, taken, taken_count=self._codes_of(batch, pattern, op.count))
            else:
                seen = set()
                for index, code in enumerate(op.codes):
                    check_code(code, f"codes[{index}]")
                    if code in seen:
                        return rejected(Code.INVALID_ARGUMENT, f"codes[{index}]: '{code}' given twice"), 0
                    if taken(code):
                        return rejected(Code.ALREADY_EXISTS, f"codes[{index}]: code '{code}' exists"), 0
                    seen.add(code)
                codes = list(op.codes)
        except PatternError as error:
            return rejected(Code.INVALID_ARGUMENT, str(error)), 0
        record = _encode(rec.PromoCodeRec(op.campaign_id, op.valid_from_ms, op.valid_to_ms, op.uses_total,
                                          op.uses_per_account))
        for code in codes:
            batch.put("codes", code.encode(), record)
        return Outcome(CODE_OK, body=PromoCodesResult(op.campaign_id, tuple(codes))), 0

    @staticmethod
    def _codes_of(_Batch batch, pattern, long long count):
        """How many of `pattern`'s codes exist, so that a request takes at most half of what it
        can still yield: counted over the codes that begin with its literal head. Not counted (0)
        when the pattern is so large beside every code there is that even if all of them were its
        own the request would fit and random draws would still mostly find free codes."""
        codes_db = batch.dbs["codes"]
        every = batch.txn.stat(codes_db)["entries"]
        if 2 * every <= pattern.capacity and allowed_count(pattern, every) >= count:
            return 0
        head = pattern.head.encode()
        cursor = batch.txn.cursor(db=codes_db)
        found = 0
        if cursor.set_range(head):
            for key in cursor.iternext(keys=True, values=False):
                if not key.startswith(head):
                    break
                found += pattern.matches(key.decode(errors="replace"))
        return found

    # -- Accrue -----------------------------------------------------------------------------------

    def _accrue(self, _Batch batch, op):
        now_ms = batch.now_ms
        member, card, rejection = self._find_customer(batch.get, op.customer)
        if rejection is not None:
            return rejection, 0
        # A blocked card may not spend; under blocked_card_earns = false it buys for 0 points (the
        # rules see it), and the purchase still counts for tiers and purchase counts.
        if card is not None and card.blocked and (op.redeem_points or op.capture_hold_ids):
            return rejected(Code.FAILED_PRECONDITION, f"customer.card: card '{op.customer.value}' is blocked",
                            Reason.CARD_BLOCKED), 0
        account = self._settle(batch.get, self._pool(batch.get, member), now_ms, batch)
        balance = self._balance(batch.get, account)
        holds = []
        for index, hold_id in enumerate(op.capture_hold_ids):
            hold, rejection = self._capturable(batch, account, hold_id, f"capture_hold_ids[{index}]")
            if rejection is not None:
                return rejection, 0
            if op.stores:
                made = _decode_txn(batch.get("journal", id_key(hold_id)))
                if made.store_id not in op.stores:
                    return self._foreign_store(made, f"capture_hold_ids[{index}]"), 0
            holds.append(hold)
        captured = sum(hold.amount for hold in holds)
        calculation, accepted = self._evaluate(batch.get, member, card, op.receipt, now_ms, balance.available,
                                               op.redeem_points, captured_points=captured)
        rejection = self._spend_rejection(account, balance, op.redeem_points, captured, calculation.redeemable_points)
        if rejection is not None:
            return rejection, 0
        spent = op.redeem_points + captured

        txn_id = batch.take_id()
        for hold in holds:
            hold.state = HOLD_CAPTURED
            batch.put("holds", id_key(hold.hold_id), _encode(hold))
            account.held -= hold.amount
            account.live_hold_ids.remove(hold.hold_id)
        postings = self._consume(batch, account, spent) if spent else []
        spent_postings = len(postings)  # the rest are earnings and debt repaid from them
        # Each line's share of what was spent, as the calculation shows it: returning the line gives it back.
        spent_shares = [line.redeemed_points + line.captured_points for line in calculation.lines]
        new_lot = None
        repaid = 0
        main_points = calculation.earned_points
        if calculation.lots:
            main_points -= sum(points for _, _, points in calculation.lots)
        if main_points:
            new_lot = self._earn(batch, account, txn_id, main_points, calculation.activate_at_ms,
                                 calculation.expire_at_ms, postings)
            repaid = self._repay_debt(batch, account, new_lot, postings)
        extra_lots = []
        for activates_at_ms, expires_at_ms, points in calculation.lots:
            lot = self._own_lot(batch, account, points, activates_at_ms, expires_at_ms, postings)
            repaid += self._repay_debt(batch, account, lot, postings)
            extra_lots.append(lot)
        self._touch(account, now_ms)
        pooled = member.account_id != account.account_id
        if pooled:
            member = self._load_account(batch.get, member.account_id)
            self._touch(member, now_ms)
        else:
            member = account
        member.lifetime_spend_minor += calculation.payable_minor
        member.lifetime_earned_points += calculation.earned_points
        member.purchases += 1
        self._record_activity(member, now_ms, calculation.payable_minor, calculation.earned_points)
        receipt = op.receipt
        lines = [rec.JournalLine(line.line_no, source.qty_milli, line.amount_minor, line.discount_minor,
                                 line.earned_points, share)
                 for line, source, share in zip(calculation.lines, receipt.lines, spent_shares)]
        entry = rec.TxnRec(
            txn_id, TXN_ACCRUE, op.request_id, account.account_id, now_ms, receipt.store_id,
            receipt.terminal_id, receipt.receipt_no, calculation.total_minor, calculation.payable_minor,
            lines, earned=calculation.earned_points, redeemed=op.redeem_points, captured=captured,
            debt_delta=-repaid,
            new_lot=new_lot, postings=postings, captured_hold_ids=list(op.capture_hold_ids),
            ruleset_version=calculation.ruleset_version, member_id=member.account_id if pooled else "",
            extra_lots=extra_lots, activity_counted=self.program.tracks_activity, spent_postings=spent_postings)
        if calculation.limited or accepted:
            self._count(batch, entry, calculation.limited, accepted, member.account_id)
        if self.program.grants:
            self._grant_tier(member, txn_id, calculation, now_ms)
        self._journal(batch, entry, account, member)
        result = AccrueResult(txn_id, account.account_id, calculation, self._balance(batch.get, account, now_ms),
                              captured)
        return Outcome(CODE_OK, body=result), txn_id

    def _capturable(self, _Batch batch, account, hold_id, field):
        stored = batch.get("holds", id_key(hold_id))
        if stored is None:
            return None, rejected(Code.NOT_FOUND, f"{field}: no hold {hold_id}")
        hold = _decode_hold(stored)
        if hold.account_id != account.account_id:
            return None, rejected(Code.FAILED_PRECONDITION, f"{field}: hold {hold_id} belongs to another account",
                                  Reason.HOLD_OTHER_ACCOUNT)
        if hold.state == HOLD_EXPIRED:
            return None, rejected(Code.FAILED_PRECONDITION, f"{field}: hold {hold_id} expired", Reason.HOLD_EXPIRED)
        if hold.state != HOLD_LIVE:
            state = rec.HoldState(hold.state).name.lower()
            return None, rejected(Code.FAILED_PRECONDITION, f"{field}: hold {hold_id} is {state}",
                                  Reason.HOLD_NOT_ACTIVE)
        return hold, None

    def _spend_rejection(self, account, balance, long long redeem, long long captured, long long redeemable):
        """Why an Accrue may not spend `redeem` points and `captured` held ones on its receipt, or
        None. Captured points count against the receipt's redeemable share as redeemed ones do."""
        if redeem and redeem > balance.available:
            return self._redeem_rejection(balance, redeem, redeemable)
        spent = redeem + captured
        # Lots may have expired under a live hold: what is spent must still be in the lots, beside
        # what the account's other holds reserve.
        spendable = account.active - account.debt - (account.held - captured)
        if spent and spent > spendable:
            return rejected(Code.FAILED_PRECONDITION,
                            f"capture_hold_ids: the held points are no longer there (lots expired); "
                            f"spendable {spendable}, needed {spent}", Reason.INSUFFICIENT_POINTS)
        if spent > redeemable:
            asked = f"{spent} ({redeem} redeem_points, {captured} in capture_hold_ids)" if captured else f"{spent}"
            return rejected(Code.FAILED_PRECONDITION, f"at most {redeemable} points may pay for this receipt, "
                            f"asked {asked}", Reason.REDEEM_SHARE_EXCEEDED)
        return None

    def _redeem_rejection(self, balance, long long points, long long redeemable):
        if points > balance.available:
            reason = Reason.NEGATIVE_BALANCE if balance.debt else Reason.INSUFFICIENT_POINTS
            return rejected(Code.FAILED_PRECONDITION,
                            f"insufficient points: available {balance.available}, asked {points}", reason)
        if points > redeemable:
            return rejected(Code.FAILED_PRECONDITION,
                            f"at most {redeemable} points may pay for this receipt, asked {points}",
                            Reason.REDEEM_SHARE_EXCEEDED)
        return None

    # -- Redeem -----------------------------------------------------------------------------------

    def _redeem(self, _Batch batch, op):
        now_ms = batch.now_ms
        member, card, rejection = self._find_customer(batch.get, op.customer)
        if rejection is not None:
            return rejection, 0
        if card is not None and card.blocked:
            return rejected(Code.FAILED_PRECONDITION, f"customer.card: card '{op.customer.value}' is blocked",
                            Reason.CARD_BLOCKED), 0
        account = self._settle(batch.get, self._pool(batch.get, member), now_ms, batch)
        balance = self._balance(batch.get, account)
        redeemable = op.receipt_total_minor * self.program.max_redeem_share_bps // 10000
        rejection = self._redeem_rejection(balance, op.points, redeemable)
        if rejection is not None:
            return rejection, 0
        txn_id = batch.take_id()
        entry = rec.TxnRec(txn_id, TXN_HOLD if op.hold else TXN_REDEEM, op.request_id,
                           account.account_id, now_ms, op.store_id, op.terminal_id,
                           total_minor=op.receipt_total_minor,
                           member_id=member.account_id if member.account_id != account.account_id else "")
        self._touch(account, now_ms)
        if op.hold:
            hold = rec.HoldRec(txn_id, account.account_id, op.points, now_ms + self.hold_ttl_ms)
            batch.put("holds", id_key(txn_id), _encode(hold))
            account.held += op.points
            account.live_hold_ids.append(txn_id)
            entry.held = op.points
            entry.hold_expires_at_ms = hold.expires_at_ms
        else:
            entry.postings = self._consume(batch, account, op.points)
            entry.redeemed = op.points
        if op.hold:
            self._schedule(account, entry.hold_expires_at_ms)
        self._journal(batch, entry, account, member)
        result = RedeemResult(txn_id, account.account_id, entry.redeemed, entry.held, entry.hold_expires_at_ms,
                              self._balance(batch.get, account, now_ms))
        return Outcome(CODE_OK, body=result), txn_id

    # -- Rollback ---------------------------------------------------------------------------------

    def _rollback(self, _Batch batch, op):
        if op.transaction_id:
            stored = batch.get("journal", id_key(op.transaction_id))
            if stored is None:
                return rejected(Code.NOT_FOUND, f"transaction_id: no transaction {op.transaction_id}"), 0
            target = _decode_txn(stored)
        else:
            stored = batch.get("idempotency", op.original_request_id.encode())
            if stored is None:
                return self._tombstone(batch, op)
            original = _decode_idempotency(stored)
            widened = _widened_tombstone(original, op.stores)
            if widened is not None:
                return self._tombstone(batch, op, widened)
            if original.txn_id == 0:
                return rejected(Code.FAILED_PRECONDITION,
                                f"original_request_id: '{op.original_request_id}' made no transaction",
                                Reason.NOT_REVERSIBLE), 0
            target = _decode_txn(batch.get("journal", id_key(original.txn_id)))
        if op.stores and target.store_id not in op.stores:
            return self._foreign_store(target, "transaction_id" if op.transaction_id else "original_request_id"), 0
        account = _decode_account(batch.get("accounts", target.account_id.encode()))
        account = self._settle(batch.get, account, batch.now_ms, batch)
        if target.kind == TXN_HOLD:
            return self._void_hold(batch, op, account, target)
        if target.kind in (TXN_REDEEM, TXN_ACCRUE, TXN_ADJUST, TXN_EVENT):
            return self._reverse(batch, op, account, target)
        return rejected(Code.FAILED_PRECONDITION,
                        f"transaction {target.txn_id} ({TxnKind(target.kind).name.lower()}) cannot be rolled back",
                        Reason.NOT_REVERSIBLE), 0

    @staticmethod
    def _foreign_store(target, field):
        return rejected(Code.PERMISSION_DENIED, f"{field}: transaction {target.txn_id} belongs to store "
                        f"'{target.store_id}', outside the caller's stores")

    def _tombstone(self, _Batch batch, op, stores=None):
        """Rollback of a transaction that has not arrived: remember it, so the late original is
        refused. It keeps the caller's stores (`stores`, when given: a widened tombstone's), so it
        cancels only an original the caller could have rolled back had it arrived first."""
        outcome = Outcome(CODE_OK, body=RollbackResult(0, "", RollbackKind.PENDING_ORIGINAL, 0, 0, 0, 0, Balance()))
        record = rec.IdempotencyRec(TOMBSTONE_DIGEST, 0, b"", list(op.stores) if stores is None else stores)
        batch.put("idempotency", op.original_request_id.encode(), _encode(record))
        return outcome, 0

    def _void_hold(self, _Batch batch, op, account, target):
        if op.return_lines:
            return rejected(Code.INVALID_ARGUMENT, "return_lines: a hold has no lines; omit return_lines to void it"), 0
        hold, rejection = self._capturable(batch, account, target.txn_id, "transaction_id")
        if rejection is not None:
            if rejection.reason == Reason.HOLD_NOT_ACTIVE:
                state = _decode_hold(batch.get("holds", id_key(target.txn_id))).state
                if state == HOLD_VOIDED:
                    return rejected(Code.FAILED_PRECONDITION, f"hold {target.txn_id} was already voided",
                                    Reason.ALREADY_ROLLED_BACK), 0
            return rejection, 0
        txn_id = batch.take_id()
        hold.state = HOLD_VOIDED
        batch.put("holds", id_key(hold.hold_id), _encode(hold))
        account.held -= hold.amount
        account.live_hold_ids.remove(hold.hold_id)
        self._journal(batch, rec.TxnRec(txn_id, TXN_ROLLBACK, op.request_id, account.account_id,
                                        batch.now_ms, op.store_id, op.terminal_id, restored=hold.amount,
                                        reverses=target.txn_id, member_id=target.member_id),
                      account, self._load_account(batch.get, target.member_id) if target.member_id else None)
        result = RollbackResult(txn_id, account.account_id, RollbackKind.VOID_HOLD, target.txn_id, 0,
                                hold.amount, 0, self._balance(batch.get, account, batch.now_ms))
        return Outcome(CODE_OK, body=result), txn_id

    def _reverse(self, _Batch batch, op, account, target):
        """Cancel or return lines of an ACCRUE, or cancel a REDEEM, pinned to what was recorded."""
        stored = batch.get("reversals", id_key(target.txn_id))
        reversal = _decode_reversal(stored) if stored else rec.ReversalRec()
        if op.return_lines and target.kind != TXN_ACCRUE:
            return rejected(Code.INVALID_ARGUMENT,
                            "return_lines: only a purchase (accrue) has lines; omit return_lines to cancel"), 0
        # A return asks for lines: more than what is left of one is RETURN_EXCEEDS_PURCHASE (from
        # `_returns`) however it came to be gone, by returns or by a cancel. Only a cancel of what
        # is gone in full is ALREADY_ROLLED_BACK.
        if reversal.complete and not op.return_lines:
            return rejected(Code.FAILED_PRECONDITION, f"transaction {target.txn_id} was already rolled back in full",
                            Reason.ALREADY_ROLLED_BACK), 0
        returns, rejection = self._returns(op, target, reversal)
        if rejection is not None:
            return rejection, 0
        # Telescoping shares: after returning R of Q units a line has given back floor(x * R / Q) of
        # each amount x it carried, so partial returns add up exactly to a full one.
        clawback = 0
        restore = 0
        for line in target.lines:
            before = reversal.returned_qty.get(line.line_no, 0)
            after = before + returns.get(line.line_no, 0)
            clawback += line.earned_points * after // line.qty_milli - line.earned_points * before // line.qty_milli
            restore += line.redeemed_points * after // line.qty_milli - line.redeemed_points * before // line.qty_milli
            reversal.returned_qty[line.line_no] = after
        if target.kind == TXN_REDEEM:
            restore = target.redeemed
        elif target.kind == TXN_EVENT:
            clawback = target.earned
        elif target.kind == TXN_ADJUST:
            clawback, restore = max(target.adjusted, 0), max(-target.adjusted, 0)
        txn_id = batch.take_id()
        postings = []
        restored, expired_on_restore = self._restore(batch, account, target, reversal, restore, postings)
        debt, forgiven = self._claw(batch, account, target, clawback, postings)
        reversal.complete = all(reversal.returned_qty.get(line.line_no, 0) == line.qty_milli for line in target.lines)
        reversal.rollback_ids.append(txn_id)
        batch.put("reversals", id_key(target.txn_id), _encode(reversal))
        account.next_change_at_ms = self._next_change(batch.get, account)
        member = self._load_account(batch.get, target.member_id) if target.member_id else None
        spender = member if member is not None else account
        if target.kind in (TXN_ACCRUE, TXN_EVENT):
            spend_back = sum(  # telescoping, like the clawback
                (line.amount_minor - line.discount_minor) * reversal.returned_qty.get(line.line_no, 0) // line.qty_milli
                - (line.amount_minor - line.discount_minor)
                * (reversal.returned_qty.get(line.line_no, 0) - returns.get(line.line_no, 0)) // line.qty_milli
                for line in target.lines)
            spender.lifetime_spend_minor -= spend_back
            spender.lifetime_earned_points -= clawback
            if target.activity_counted:  # (a purchase made under a ruleset without tiers added none)
                self._record_activity(spender, target.created_at_ms, -spend_back, -clawback)
        kind = RollbackKind.CANCEL if not op.return_lines else RollbackKind.RETURN
        # What no point covered is debt on the rollback's entry; under "clamp" a WRITE_OFF entry
        # drops that debt at once, so that each entry's amounts add up to what it changed.
        entry = rec.TxnRec(
            txn_id, TXN_ROLLBACK, op.request_id, account.account_id, batch.now_ms, op.store_id,
            op.terminal_id, target.receipt_no, clawed=clawback, restored=restored, expired=expired_on_restore,
            debt_delta=debt + forgiven, postings=postings, reverses=target.txn_id,
            returned=sorted(returns.items()), member_id=target.member_id)
        if target.limited or target.use_keys:
            self._uncount(batch, entry, target, returns, reversal, reversal.complete)
        if reversal.complete and spender.tier_grants:
            spender.tier_grants = [grant for grant in spender.tier_grants if grant[2] != target.txn_id]
        self._journal(batch, entry, account, member)
        if forgiven:
            self._journal(batch, rec.TxnRec(batch.take_id(), TXN_WRITE_OFF, "", account.account_id, batch.now_ms,
                                            forgiven=forgiven, debt_delta=-forgiven, reverses=txn_id,
                                            member_id=target.member_id), account, member)
        result = RollbackResult(txn_id, account.account_id, kind, target.txn_id, clawback, restored, debt,
                                self._balance(batch.get, account, batch.now_ms), clawback - debt - forgiven, forgiven)
        return Outcome(CODE_OK, body=result), txn_id

    def _returns(self, op, target, reversal):
        """{line_no: qty_milli to give back now}, or a rejection naming the field."""
        if not op.return_lines:
            if target.kind != TXN_ACCRUE:
                return {}, None
            return {line.line_no: line.qty_milli - reversal.returned_qty.get(line.line_no, 0)
                    for line in target.lines}, None
        bought = {line.line_no: line.qty_milli for line in target.lines}
        returns = {}
        for index, item in enumerate(op.return_lines):
            field = f"return_lines[{index}]"
            if item.line_no not in bought:
                return None, rejected(Code.INVALID_ARGUMENT,
                                      f"{field}.line_no: transaction {target.txn_id} has no line {item.line_no}")
            if item.line_no in returns:
                return None, rejected(Code.INVALID_ARGUMENT, f"{field}.line_no: line {item.line_no} named twice")
            already = reversal.returned_qty.get(item.line_no, 0)
            if already + item.qty_milli > bought[item.line_no]:
                return None, rejected(
                    Code.FAILED_PRECONDITION,
                    f"{field}.qty_milli: line {item.line_no} bought {bought[item.line_no]}, returned {already}, "
                    f"asked {item.qty_milli}", Reason.RETURN_EXCEEDS_PURCHASE)
            returns[item.line_no] = item.qty_milli
        return returns, None

    def _restore(self, _Batch batch, account, target, reversal, long long points, list postings):
        """Give `points` back to the lots the original took them from, last taken first, each
        with its original expiry. Points whose lot has expired meanwhile stay expired."""
        taken = target.postings if target.spent_postings < 0 else target.postings[:target.spent_postings]
        spent = [posting for posting in taken if posting.delta < 0]
        if len(reversal.restored_per_posting) != len(spent):
            reversal.restored_per_posting = [0] * len(spent)
        restored = 0
        expired = 0
        for index in reversed(range(len(spent))):
            if points == 0:
                break
            posting = spent[index]
            give = min(points, -posting.delta - reversal.restored_per_posting[index])
            if give <= 0:
                continue
            points -= give
            reversal.restored_per_posting[index] += give
            lot = _decode_lot(batch.get("lots", id_key(posting.lot_id)))
            burnt = lot.lot_id < account.burnt_below_lot_id
            if burnt or lot.state == LOT_EXPIRED or (lot.expires_at_ms and lot.expires_at_ms <= batch.now_ms):
                expired += give
                continue
            if lot.remaining == 0:
                self._open_lot(batch.get, account, lot)
            lot.remaining += give
            account.active += give
            restored += give
            postings.append(rec.Posting(lot.lot_id, give))
            batch.put("lots", id_key(lot.lot_id), _encode(lot))
        return restored, expired

    def _claw(self, _Batch batch, account, target, long long points, list postings):
        """Take back `points` earned by `target`: from its own lot first, then from the account's
        other lots; what no lot covers becomes debt (policy "negative") or is dropped ("clamp")."""
        if points == 0:
            return 0, 0
        # The purchase's own lots first (never shared), then the day's lot it added to.
        own = target.extra_lots + ([target.new_lot] if target.new_lot is not None else [])
        for made in own:
            if points == 0:
                break
            lot = _decode_lot(batch.get("lots", id_key(made.lot_id)))
            if lot.state != LOT_EXPIRED and lot.remaining:
                take = min(points, lot.remaining)
                lot.remaining -= take
                points -= take
                if lot.state == LOT_PENDING:
                    account.pending -= take
                else:
                    account.active -= take
                if lot.remaining == 0 and lot.state != LOT_PENDING:
                    account.open_lot_ids.remove(lot.lot_id)
                postings.append(rec.Posting(lot.lot_id, -take))
                batch.put("lots", id_key(lot.lot_id), _encode(lot))
        available = max(0, account.active - account.debt - account.held)
        take = min(points, available)
        if take:
            postings.extend(self._consume(batch, account, take))
            points -= take
        if points == 0:
            return 0, 0
        if self.program.clawback_clamp:
            return 0, points
        account.debt += points
        return points, 0

    # -- Accounts ---------------------------------------------------------------------------------

    def _create_account(self, _Batch batch, op):
        account_id = op.account_id
        if account_id and batch.get("accounts", account_id.encode()) is not None:
            return rejected(Code.ALREADY_EXISTS, f"account_id: account '{account_id}' exists"), 0
        if op.phone and batch.get("idents", ident_key(ID_PHONE, op.phone)) is not None:
            return rejected(Code.ALREADY_EXISTS, f"phone: phone '{op.phone}' belongs to another account"), 0
        txn_id = batch.take_id()
        if not account_id:
            account_id = f"A{txn_id:010d}"
        account = rec.AccountRec(account_id, op.phone, batch.now_ms)
        self._save_account(batch, account)
        if op.phone:
            batch.put("idents", ident_key(ID_PHONE, op.phone), _encode(rec.IdentRec(account_id)))
        self._journal(batch, rec.TxnRec(txn_id, TXN_CREATE_ACCOUNT, op.request_id, account_id, batch.now_ms),
                      account)
        return Outcome(CODE_OK, body=self._account_view(batch.get, account, batch.now_ms, batch)), txn_id

    def _issue_card(self, _Batch batch, op):
        stored = batch.get("accounts", op.account_id.encode())
        if stored is None:
            return rejected(Code.NOT_FOUND, f"account_id: no account '{op.account_id}'"), 0
        key = ident_key(ID_CARD, op.card)
        owner = batch.get("idents", key)
        if owner is not None:
            return rejected(Code.ALREADY_EXISTS, f"card: card '{op.card}' is already issued"), 0
        account = _decode_account(stored)
        if op.replaces_card:
            old_key = ident_key(ID_CARD, op.replaces_card)
            old = batch.get("idents", old_key)
            if old is None or _decode_ident(old).account_id != account.account_id:
                return rejected(Code.NOT_FOUND,
                                f"replaces_card: account '{account.account_id}' has no card '{op.replaces_card}'"), 0
            old_ident = _decode_ident(old)
            old_ident.blocked = True
            batch.put("idents", old_key, _encode(old_ident))
        txn_id = batch.take_id()
        account.cards.append(op.card)
        self._save_account(batch, account)
        batch.put("idents", key, _encode(rec.IdentRec(account.account_id, op.category)))
        self._journal(batch, rec.TxnRec(txn_id, TXN_ISSUE_CARD, op.request_id, account.account_id, batch.now_ms),
                      account)
        return Outcome(CODE_OK, body=self._account_view(batch.get, account, batch.now_ms, batch)), txn_id

    def _block_card(self, _Batch batch, op):
        key = ident_key(ID_CARD, op.card)
        stored = batch.get("idents", key)
        if stored is None:
            return rejected(Code.NOT_FOUND, f"card: no card '{op.card}'"), 0
        ident = _decode_ident(stored)
        ident.blocked = True
        batch.put("idents", key, _encode(ident))
        txn_id = batch.take_id()
        self._journal(batch, rec.TxnRec(txn_id, TXN_BLOCK_CARD, op.request_id, ident.account_id, batch.now_ms),
                      self._load_account(batch.get, ident.account_id))
        return Outcome(CODE_OK, body=CardResult(CardInfo(op.card, ident.category, True))), txn_id

    def _set_attributes(self, _Batch batch, op):
        account, rejection = self._find_account(batch.get, op.customer)
        if rejection is not None:
            return rejection, 0
        account.segments = list(op.segments)
        account.tags = list(op.tags)
        account.birthday = op.birthday
        account.clubs = list(op.clubs)
        self._save_account(batch, account)
        txn_id = batch.take_id()
        self._journal(batch, rec.TxnRec(txn_id, TXN_SET_ATTRIBUTES, op.request_id, account.account_id,
                                        batch.now_ms), account)
        return Outcome(CODE_OK, body=self._account_view(batch.get, account, batch.now_ms, batch)), txn_id

    def _adjust(self, _Batch batch, op):
        """A manual credit (a new lot with the program's lifetime, to a UTC midnight) or debit (from
        the lots, earliest expiry first, at most what is available), journaled with its reason and
        operator; reversible by Rollback."""
        now_ms = batch.now_ms
        member, rejection = self._find_account(batch.get, op.customer)
        if rejection is not None:
            return rejection, 0
        account = self._settle(batch.get, self._pool(batch.get, member), now_ms, batch)
        if op.points < 0:
            balance = self._balance(batch.get, account)
            if -op.points > balance.available:
                return rejected(Code.FAILED_PRECONDITION,
                                f"points: debit of {-op.points} exceeds available {balance.available}",
                                Reason.INSUFFICIENT_POINTS), 0
        txn_id = batch.take_id()
        entry = rec.TxnRec(txn_id, TXN_ADJUST, op.request_id, account.account_id, now_ms, adjusted=op.points,
                           reason=op.reason, operator_id=op.operator_id,
                           member_id=member.account_id if member.account_id != account.account_id else "")
        if op.points > 0:
            entry.new_lot = rec.LotRec(txn_id, account.account_id, op.points, op.points, now_ms,
                                       self.program.credit_expiry(now_ms))
            self._add_lot(batch, account, entry.new_lot)
            entry.postings = [rec.Posting(txn_id, op.points)]
            entry.debt_delta = -self._repay_debt(batch, account, entry.new_lot, entry.postings)
        else:
            entry.postings = self._consume(batch, account, -op.points)
        self._touch(account, now_ms)
        self._journal(batch, entry, account, member)
        balance = self._balance(batch.get, account, now_ms)
        return Outcome(CODE_OK, body=AdjustResult(txn_id, account.account_id, balance)), txn_id

    def _join_group(self, _Batch batch, op):
        member = self._load_account(batch.get, op.account_id)
        parent = self._load_account(batch.get, op.parent_account_id)
        if member is None:
            return rejected(Code.NOT_FOUND, f"account_id: no account '{op.account_id}'"), 0
        if parent is None:
            return rejected(Code.NOT_FOUND, f"parent_account_id: no account '{op.parent_account_id}'"), 0
        if member.account_id == parent.account_id:
            return rejected(Code.INVALID_ARGUMENT, "parent_account_id: an account cannot join itself"), 0
        if member.parent_id or member.member_ids or parent.parent_id:
            return rejected(Code.FAILED_PRECONDITION, "account_id: groups are one level deep and an account "
                            "belongs to at most one", Reason.ALREADY_IN_GROUP), 0
        member = self._settle(batch.get, member, batch.now_ms, batch)
        if member.active or member.pending or member.held or member.debt:
            return rejected(Code.FAILED_PRECONDITION, f"account_id: '{member.account_id}' holds points, holds or "
                            "debt; a member joins empty", Reason.ACCOUNT_NOT_EMPTY), 0
        member.parent_id = parent.account_id
        parent.member_ids.append(member.account_id)
        return self._group_changed(batch, op, TXN_JOIN_GROUP, member, parent)

    def _leave_group(self, _Batch batch, op):
        member = self._load_account(batch.get, op.account_id)
        if member is None:
            return rejected(Code.NOT_FOUND, f"account_id: no account '{op.account_id}'"), 0
        if not member.parent_id:
            return rejected(Code.FAILED_PRECONDITION, f"account_id: '{member.account_id}' is in no group",
                            Reason.NOT_IN_GROUP), 0
        parent = self._load_account(batch.get, member.parent_id)
        parent.member_ids.remove(member.account_id)
        member.parent_id = ""
        return self._group_changed(batch, op, TXN_LEAVE_GROUP, member, parent)

    def _group_changed(self, _Batch batch, op, kind, member, parent):
        txn_id = batch.take_id()
        self._journal(batch, rec.TxnRec(txn_id, kind, op.request_id, parent.account_id, batch.now_ms,
                                        member_id=member.account_id), parent, member)
        return Outcome(CODE_OK, body=self._account_view(batch.get, member, batch.now_ms, batch)), txn_id

    def _sweep(self, _Batch batch, op):
        """Settle accounts whose lots or holds came due, writing the expiry journal entries."""
        settled = 0
        cursor = batch.txn.cursor(db=batch.dbs["accounts"])
        due = []
        for key, value in cursor:
            account = _decode_account(value)
            if account.next_change_at_ms and account.next_change_at_ms <= batch.now_ms:
                due.append(account)
                if len(due) > op.accounts_max:
                    break
        more = len(due) > op.accounts_max
        first_id = batch.next_id
        for account in due[:op.accounts_max]:
            self._settle(batch.get, account, batch.now_ms, batch)
            settled += 1
        expired = 0
        for txn_id in range(first_id, batch.next_id):
            expired += _decode_txn(batch.get("journal", id_key(txn_id))).expired
        return Outcome(CODE_OK, body=SweepResult(settled, expired, more))

    def _account_view(self, get, account, long long now_ms, _Batch batch=None):
        """The account as shown (after the caller saved it); its balance is its pool's as a settle
        at `now_ms` would leave it, computed on a copy laid over the read or the write `batch`, so
        that showing an account writes nothing."""
        cards = []
        for card in account.cards:
            ident = _decode_ident(get("idents", ident_key(ID_CARD, card)))
            cards.append(CardInfo(card, ident.category, ident.blocked))
        view = _ReadView(batch.txn, batch.dbs) if batch is not None else get
        pool = self._settle(view, self._pool(view, account), now_ms)
        balance = self._balance(view, pool, now_ms)
        tier, next_tier, missing = self._tier(account, now_ms) if self.program.tier_levels else ("", "", 0)
        return AccountView(account.account_id, account.phone, tuple(cards), balance,
                           account.created_at_ms, account.lifetime_spend_minor, account.lifetime_earned_points,
                           account.parent_id, tuple(account.member_ids), tuple(account.segments),
                           tuple(account.tags), account.birthday, tuple(account.clubs), account.last_activity_at_ms,
                           tier, next_tier, missing, account.purchases)

    # -----------------------------------------------------------------------------------------
    # Reads

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
            member, card, rejection = self._find_customer(get, query.customer)
            if rejection is not None:
                return rejection
            account = self._settle(get, self._pool(get, member), now_ms)
            balance = self._balance(get, account, now_ms)
            calculation, _ = self._evaluate(get, member, card, query.receipt, now_ms,
                                            balance.available, query.redeem_points, query.explain)
        if query.redeem_points:
            rejection = self._redeem_rejection(balance, query.redeem_points, calculation.redeemable_points)
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
            account, rejection = self._find_account(get, customer)
            if rejection is not None:
                return rejection
            return Outcome(CODE_OK, body=self._account_view(get, account, now_ms))

    def statement(self, customer, page_size, before_id):
        """Newest first, `page_size` entries older than `before_id` (0: from the newest)."""
        try:
            return self._statement(customer, min(page_size or STATEMENT_PAGE_SIZE_DEFAULT, STATEMENT_PAGE_SIZE_MAX),
                                   before_id)
        except lmdb.Error as error:
            return _read_refusal(error)

    def _statement(self, customer, int page_size, long long before_id):
        with self.env.begin() as txn:
            get = self._reader(txn)
            account, rejection = self._find_account(get, customer)
            if rejection is not None:
                return rejection
            me = account.account_id
            next_id = account.last_txn_id
            if before_id:
                stored = get("journal", id_key(before_id))
                entry = _decode_txn(stored) if stored is not None else None
                if entry is None or me not in (entry.account_id, entry.member_id):
                    return rejected(Code.INVALID_ARGUMENT, f"page_token: not a page of account '{me}'")
                next_id = _previous_of(entry, me)
            views = []
            while next_id and len(views) <= page_size:
                entry = _decode_txn(get("journal", id_key(next_id)))
                views.append(_view(entry, me))
                next_id = _previous_of(entry, me)
        next_before_id = views[page_size - 1].transaction_id if len(views) > page_size else 0
        return Outcome(CODE_OK, body=Statement(account.account_id, tuple(views[:page_size]), next_before_id))

    # -----------------------------------------------------------------------------------------
    # Invariants

    def verify(self, long long now_ms):
        """Check the invariants of DESIGN §4 (1-4) over the whole ledger; returns a list of
        violations, each a string naming the account or record, what was expected, what was found."""
        from kassa.core_ext.verify import check_ledger
        with self.env.begin() as txn:
            return check_ledger(txn, self.dbs, now_ms)

    def raw_transaction(self):
        """A read transaction and the named databases, for tools (verify, backup, tests)."""
        return self.env.begin(), self.dbs


# -- Idempotency records ------------------------------------------------------------------------

cdef bytes _idempotency_record(bytes digest, long long txn_id, outcome):
    """The record a retry is answered from. An accepted purchase keeps only what its journal entry
    does not (`AccrueOutcomeRec`); any other outcome keeps the whole answer (`IdempotencyRec`).
    A digest of b"" is a tombstone's: such a request keeps the whole answer too, so that a record
    with an empty digest is always an `IdempotencyRec`."""
    body = outcome.body
    if txn_id == 0 or not digest or type(body) is not AccrueResult:
        return _encode(rec.IdempotencyRec(digest, txn_id, _encode(outcome)))
    calculation = body.calculation
    compact = AccrueOutcomeRec(
        digest, txn_id, body.balance, tuple(calculation.campaigns), calculation.discount_minor,
        calculation.redeemable_points, calculation.redeemed_points, calculation.activate_at_ms,
        calculation.expire_at_ms, _accrue_outcome_rare(calculation))
    return IDEMPOTENCY_ACCRUE_V1_BYTE + _encode(compact)


cdef _accrue_outcome_rare(calculation):
    """What a plain purchase leaves empty, or None when it is."""
    cdef bint captured_by_line = False
    for line in calculation.lines:
        if line.captured_points:
            captured_by_line = True
            break
    if not (calculation.promo_codes or calculation.explain or calculation.limited or calculation.lots
            or calculation.captured_points or calculation.no_points_reason or captured_by_line):
        return None
    return AccrueOutcomeRare(
        tuple(calculation.promo_codes), tuple(calculation.explain), tuple(calculation.limited),
        tuple(calculation.lots), calculation.captured_points, calculation.no_points_reason,
        tuple([line.captured_points for line in calculation.lines]) if captured_by_line else ())


cdef _rebuilt_accrue(record, entry):
    """The answer `_accrue` gave, from its compact record and its journal entry `entry` (which
    `_accrue` wrote from the same calculation: lines, totals, points, ruleset, account, captured)."""
    rare = record.rare if record.rare is not None else NO_RARE
    captured_by_line = rare.line_captured_points or (0,) * len(entry.lines)
    lines = tuple([LineResult(line.line_no, line.amount_minor, line.discount_minor, line.earned_points,
                              line.redeemed_points - captured, captured)
                   for line, captured in zip(entry.lines, captured_by_line)])
    calculation = Calculation(
        lines, entry.total_minor, record.discount_minor, entry.payable_minor, entry.earned,
        record.redeemable_points, record.redeemed_points, record.campaigns, entry.ruleset_version,
        record.activate_at_ms, record.expire_at_ms, rare.promo_codes, rare.explain, rare.limited,
        rare.lots, rare.captured_points, rare.no_points_reason)
    return Outcome(CODE_OK, body=AccrueResult(entry.txn_id, entry.account_id, calculation, record.balance,
                                              entry.captured))


cdef inline bint _spared_by_tombstone(record, op):
    """A tombstone written by a key scoped to other stores than `op`'s does not cancel it: `op`
    is applied as if the tombstone were not there (and its own record replaces it)."""
    return record.digest == TOMBSTONE_DIGEST and record.stores and store_of(op) not in record.stores


cdef _widened_tombstone(record, tuple stores):
    """The stores a tombstone covers once a caller scoped to `stores` (() for any) rolls the same
    original back too; None when it covers them already (or `record` is no tombstone)."""
    if record.digest != TOMBSTONE_DIGEST or not record.stores:
        return None
    if not stores:
        return []
    missing = [store for store in stores if store not in record.stores]
    return sorted(record.stores + missing) if missing else None


cdef inline long long _previous_of(entry, str account_id):
    """The account's entry before `entry` in its statement (0: none)."""
    return entry.prev_id if entry.account_id == account_id else entry.member_prev_id


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
