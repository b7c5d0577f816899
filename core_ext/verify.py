"""The ledger's invariants (DESIGN §4, 1-4), checked over a read transaction.

1. Every account's active, pending and held totals equal the sums over its lots and live holds,
   and its open lots are in expiry order once it keeps them so.
2. Replaying the journal from empty reproduces every lot's `remaining` (from its postings; a lot
   that compaction removed must replay to nothing), every account's debt (from its debt entries),
   every hold's fate (held, captured or voided) and every counter (campaign caps, budgets, uses,
   promo-code uses). A counter compaction removed (a closed period's, a removed promo code's:
   `compaction.removed_counters`) may be missing whatever the journal sums to; one still kept
   must equal its sum, like every other.
3. A request id maps to at most one transaction, and that transaction carries the request id.
4. No rollback returned more than was bought or clawed back more than was earned.
5. No lot and no account total is below zero (only clawback debt may make a balance negative).
6. Every account's statement (its chain of journal entries, as ListTransactions shows it) holds
   every entry that names the account, and its entries' amounts add up to the account's points
   (active + pending - debt): each entry shows what it changed (`records.statement_change`), and
   that is what its postings and debt change moved. A change no entry shows, such as clawback
   dropped without a write-off entry, fails here.

Across the archive boundary (core_ext/journal_archive): the journal's checks start from the
checkpoints the archived entries carried forward (each lot's postings, each account's debt and
statement points, each counter), and the statement walk ends at the checkpoint's last entry. Given
the archive's directory, every listed segment is checked (present, sha256, manifest) and read once:
its entries summed must equal the checkpoints, and they answer what reversals, idempotency records
and holds ask of archived entries.

Memory: the journal, the lots and the request records are read through cursors (the journal once
in order, then by key where a check follows a link), never held decoded all at once; what is kept
is per account (its record, its sums), per lot and per counter (integer sums), and the archived
entries that reversals name. A 3 GB ledger took 20 GB when every record was decoded at once.
"""

from __future__ import annotations

from collections import defaultdict

import msgspec

from kassa.core_ext import records as rec
from kassa.core_ext.compaction import removed_counters
from kassa.core_ext.journal_archive import checking as archive_checking
from kassa.core_ext.journal_archive import state as archive_state
from kassa.core_ext.model import TxnKind

_decode_account = rec.decode_account
_decode_lot = rec.decode_lot
_decode_hold = rec.decode_hold
_decode_txn = rec.decode_txn
_decode_reversal = rec.decode_reversal
_decode_idempotency = rec.decode_idempotency


class _TxnRequest(msgspec.Struct, array_like=True, gc=False):
    """The first fields of a journal entry (`records.TxnRec`): what the request check reads of it."""

    txn_id: int
    kind: int
    request_id: str


_decode_request = msgspec.msgpack.Decoder(_TxnRequest).decode


def _records(txn, db, decode):
    for key, value in txn.cursor(db=db):
        yield key, decode(value)


def _request_records(txn, dbs):
    """Every request's record: in `idempotency`, or past the replay window in `retained`."""
    yield from _records(txn, dbs["idempotency"], _decode_idempotency)
    yield from _records(txn, dbs["retained"], _decode_idempotency)


def check_ledger(txn, dbs, now_ms: int, archive_dir=None) -> list[str]:
    """`archive_dir`: the journal archive's directory (`<ledger path>/archive`); without it the
    segments are not read, and what only they can answer is not checked."""
    violations: list[str] = []
    accounts = {account.account_id: account for _, account in _records(txn, dbs["accounts"], _decode_account)}
    lots = _Lots(txn, dbs["lots"])
    holds = [hold for _, hold in _records(txn, dbs["holds"], _decode_hold)]
    carried = _Carried(txn, dbs)
    journal = _Journal(txn, dbs["journal"], carried.below)
    if carried.below and archive_dir is not None:
        wanted = _wanted_from_archive(txn, dbs, holds, carried.below)
        carried.found = archive_checking.check_archive(archive_dir, txn, dbs, wanted, violations)

    replayed = _replay_journal(journal, carried)
    _check_totals(accounts, lots, holds, violations)
    _check_replay(txn, dbs, accounts, lots, holds, replayed, violations, carried)
    _check_request_ids(txn, dbs, journal, violations, carried.below)
    _check_reversals(txn, dbs, _Journal(txn, dbs["journal"], carried.below, carried.entries()), violations,
                     carried.below)
    _check_statements(accounts, journal, replayed.naming, violations, carried)
    return violations


class _Carried:
    """What the archived part of the journal carried forward: the checks start from it."""

    def __init__(self, txn, dbs):
        get = lambda name, key: txn.get(key, db=dbs[name])  # noqa: E731
        self.below = archive_state.read_below(get)
        self.checkpoints = archive_state.read_checkpoints(txn, dbs["meta"]) if self.below else {}
        self.lot_postings = archive_checking.lot_postings_carried(self.checkpoints)
        self.counters = archive_state.read_counters(get)
        self.found = None  # what reading the segments found (None: not read)

    def entries(self) -> dict:
        return self.found.entries if self.found is not None else {}


class _Journal:
    """The journal from the archive boundary on (an interrupted archive run may have left archived
    entries below it: they are the archive's), read from LMDB when asked: in order by `values`,
    by id by `get`. `archived`: entries from below the boundary that the archive gave."""

    def __init__(self, txn, db, below: int, archived: dict | None = None):
        self.txn, self.db, self.below, self.archived = txn, db, below, archived or {}

    def values(self):
        cursor = self.txn.cursor(db=self.db)
        if cursor.set_range(self.below.to_bytes(8, "big")):
            yield from map(_decode_txn, cursor.iternext(keys=False))

    def get(self, txn_id: int, default=None):
        if txn_id < self.below:
            return self.archived.get(txn_id, default)
        stored = self.txn.get(txn_id.to_bytes(8, "big"), db=self.db)
        return default if stored is None else _decode_txn(stored)

    def request_id_of(self, txn_id: int) -> str | None:
        """The request id the entry carries (None: no such entry), without decoding the rest of it."""
        stored = self.txn.get(txn_id.to_bytes(8, "big"), db=self.db) if txn_id >= self.below else None
        return None if stored is None else _decode_request(rec.journal_body(stored)).request_id

    def __contains__(self, txn_id: int) -> bool:
        return self.get(txn_id) is not None

    def __getitem__(self, txn_id: int):
        entry = self.get(txn_id)
        if entry is None:
            raise KeyError(txn_id)
        return entry


class _Lots:
    """The lots database, read when asked: in key order by `values`, by id by `get`."""

    def __init__(self, txn, db):
        self.txn, self.db = txn, db

    def values(self):
        for _, lot in _records(self.txn, self.db, _decode_lot):
            yield lot

    def get(self, lot_id: int, default=None):
        stored = self.txn.get(lot_id.to_bytes(8, "big"), db=self.db)
        return default if stored is None else _decode_lot(stored)

    def __contains__(self, lot_id: int) -> bool:
        return self.txn.get(lot_id.to_bytes(8, "big"), db=self.db) is not None

    def __getitem__(self, lot_id: int):
        lot = self.get(lot_id)
        if lot is None:
            raise KeyError(lot_id)
        return lot


def _wanted_from_archive(txn, dbs, holds: list, below: int) -> archive_checking.Wanted:
    """The archived entries the journal's checks need: reversals' originals and rollbacks,
    idempotency records' transactions, and the HOLD entries of holds still kept."""
    entries: set[int] = set()
    for key, reversal in _records(txn, dbs["reversals"], _decode_reversal):
        entries.update(txn_id for txn_id in (int.from_bytes(key, "big"), *reversal.rollback_ids) if txn_id < below)
    request_ids = {record.txn_id: key.decode() for key, record in _request_records(txn, dbs)
                   if 0 < record.txn_id < below}
    return archive_checking.Wanted(entries, request_ids, {hold.hold_id for hold in holds if hold.hold_id < below})


def _check_totals(accounts: dict, lots: dict, holds: list, violations: list[str]) -> None:
    """Each account's active, pending and held points against its lots and holds."""
    sums: dict[str, dict[str, int]] = defaultdict(lambda: {"active": 0, "pending": 0, "held": 0})
    for lot in lots.values():
        if lot.state == rec.LotState.ACTIVE:
            sums[lot.account_id]["active"] += lot.remaining
        elif lot.state == rec.LotState.PENDING:
            sums[lot.account_id]["pending"] += lot.remaining
        if lot.remaining < 0:
            violations.append(f"lot {lot.lot_id} (account {lot.account_id}): remaining {lot.remaining} < 0")
    for hold in holds:
        if hold.state == rec.HoldState.LIVE:
            sums[hold.account_id]["held"] += hold.amount
    for account_id in sorted(set(accounts) | set(sums)):
        account = accounts.get(account_id)
        if account is None:
            violations.append(f"account {account_id}: has lots or holds but no account record")
            continue
        for field in ("active", "pending", "held"):
            expected, found = sums[account_id][field], getattr(account, field)
            if expected != found:
                violations.append(f"account {account_id}: {field} expected {expected} (from lots/holds), found {found}")
            if found < 0:
                violations.append(f"account {account_id}: {field} expected >= 0, found {found}")
        if account.lots_by_expiry:
            order = [rec.lot_expiry_order(lots[lot_id]) for lot_id in account.open_lot_ids if lot_id in lots]
            if order != sorted(order):
                violations.append(f"account {account_id}: open lots expected in expiry order, found "
                                  f"{account.open_lot_ids}")


class _Replayed(msgspec.Struct):
    """What one pass over the journal, in order, from the checkpoints, rebuilds."""

    lot_postings: dict[int, int]  # lot id -> its postings summed
    debt: dict[str, int]
    created: dict[int, int]  # lot id -> the transaction that created it
    counters: dict[bytes, int]
    hold_fates: dict[int, str]
    naming: dict[str, int]  # account id -> journal entries that name it (as account or member)


def _replay_journal(journal: _Journal, carried: _Carried) -> _Replayed:
    replayed = _Replayed(defaultdict(int, carried.lot_postings),
                         defaultdict(int, {account_id: checkpoint.debt
                                           for account_id, checkpoint in carried.checkpoints.items()}),
                         {}, defaultdict(int, carried.counters), archive_checking.hold_fates_start(carried.found),
                         defaultdict(int))
    postings, debt, created, counters = replayed.lot_postings, replayed.debt, replayed.created, replayed.counters
    fates, naming = replayed.hold_fates, replayed.naming
    for entry in journal.values():
        for posting in entry.postings:
            postings[posting.lot_id] += posting.delta
        debt[entry.account_id] += entry.debt_delta
        if entry.new_lot is not None:
            created[entry.new_lot.lot_id] = entry.txn_id
        for made in entry.extra_lots:
            created[made.lot_id] = entry.txn_id
        for key, delta in entry.counters:
            counters[key] += delta
        _replay_hold(entry, fates)
        naming[entry.account_id] += 1
        if entry.member_id and entry.member_id != entry.account_id:
            naming[entry.member_id] += 1
    return replayed


def _check_replay(txn, dbs, accounts: dict, lots: _Lots, holds: list, replayed: _Replayed, violations: list[str],
                  carried: _Carried) -> None:
    """The journal replayed from the checkpoints: lots, settles due, holds, counters and debts it rebuilds."""
    _check_lots_replayed(lots, replayed, violations)
    _check_settles_due(accounts, lots, holds, violations)
    fates = replayed.hold_fates
    for hold in holds:
        if hold.hold_id < carried.below and carried.found is None:
            continue  # its HOLD entry is archived and the segments were not read
        expected = fates.get(hold.hold_id)
        found = {rec.HoldState.CAPTURED: "captured", rec.HoldState.VOIDED: "voided"}.get(hold.state, "held")
        if expected != found:
            violations.append(f"account {hold.account_id}: hold {hold.hold_id} expected {expected} "
                              f"(journal replay), found {found}")
    _check_counters_replayed(txn, dbs, replayed.counters, violations)
    debt = replayed.debt
    for account_id, account in accounts.items():
        if debt.get(account_id, 0) != account.debt:
            violations.append(f"account {account_id}: debt expected {debt.get(account_id, 0)} (journal replay), "
                              f"found {account.debt}")


def _check_lots_replayed(lots: _Lots, replayed: _Replayed, violations: list[str]) -> None:
    """Each lot against its postings; then what the journal posts to lots that are gone. The sums
    are taken out as their lots are read (no lookup per lot): what is left names missing lots."""
    postings, created = replayed.lot_postings, replayed.created
    for lot in lots.values():
        expected = postings.pop(lot.lot_id, 0)
        created.pop(lot.lot_id, None)
        if expected != lot.remaining:
            violations.append(f"account {lot.account_id}: lot {lot.lot_id} remaining expected "
                              f"{expected} (journal replay), found {lot.remaining}")
    # Compaction removes lots that ended (core_ext/compaction.py): a missing lot is one whose
    # postings took it to nothing; one that the journal leaves with points is missing points.
    for lot_id in sorted(lot_id for lot_id, total in postings.items() if total):
        made_by = f"transaction {created[lot_id]}: created" if lot_id in created else "the journal posts to"
        violations.append(f"{made_by} lot {lot_id}, which is missing with {postings[lot_id]} points left "
                          "(journal replay)")


def _check_settles_due(accounts: dict, lots: _Lots, holds: list, violations: list[str]) -> None:
    """What time will change must be scheduled: an account settles by its earliest activation,
    expiry or hold expiry, or points could outlive their lifetime."""
    due: dict[str, int] = {}
    for lot in lots.values():
        at = lot.activates_at_ms if lot.state == rec.LotState.PENDING else (
            lot.expires_at_ms if lot.state == rec.LotState.ACTIVE and lot.remaining else 0)
        if at:
            due[lot.account_id] = min(at, due.get(lot.account_id, at))
    for hold in holds:
        if hold.state == rec.HoldState.LIVE:
            due[hold.account_id] = min(hold.expires_at_ms, due.get(hold.account_id, hold.expires_at_ms))
    for account_id, at in due.items():
        account = accounts.get(account_id)
        if account is not None and not 0 < account.next_change_at_ms <= at:
            violations.append(f"account {account_id}: next settle expected by {at}, found {account.next_change_at_ms}")


def _check_counters_replayed(txn, dbs, counted: dict[bytes, int], violations: list[str]) -> None:
    stored = {key: int.from_bytes(value, "big", signed=True) for key, value in txn.cursor(db=dbs["counters"])}
    removed = removed_counters(lambda name, key: txn.get(key, db=dbs[name]))
    for key in sorted(set(counted) | set(stored)):
        if key not in stored and removed(key):
            continue  # compaction removed it: nothing changes it any more (see compaction.py)
        if counted.get(key, 0) != stored.get(key, 0):
            violations.append(f"counter {key.decode(errors='replace')!r}: expected {counted.get(key, 0)} "
                              f"(journal replay), found {stored.get(key, 0)}")
        if stored.get(key, 0) < 0:
            violations.append(f"counter {key.decode(errors='replace')!r}: below zero ({stored[key]})")


def _check_request_ids(txn, dbs, journal: _Journal, violations: list[str], below: int) -> None:
    """One request id, one transaction, and the transaction names its request id (below the
    archive boundary `below`, the archive's check looks for the transaction). From the boundary
    on, a transaction claimed twice carries at most one of the two ids: the other is found by
    reading the transaction, so no map of every request is kept."""
    archived_owners: dict[int, str] = {}
    for key, record in _request_records(txn, dbs):
        request_id = key.decode()
        if record.txn_id == 0:
            continue
        if record.txn_id < below:
            if record.txn_id in archived_owners:
                violations.append(f"transaction {record.txn_id}: claimed by request ids "
                                  f"'{archived_owners[record.txn_id]}' and '{request_id}'")
            archived_owners[record.txn_id] = request_id
            continue
        carried_id = journal.request_id_of(record.txn_id)
        if carried_id is None:
            violations.append(f"request '{request_id}': transaction {record.txn_id} is missing from the journal")
        elif carried_id != request_id:
            if _request_txn_id(txn, dbs, carried_id) == record.txn_id:
                violations.append(f"transaction {record.txn_id}: claimed by request ids '{carried_id}' "
                                  f"and '{request_id}'")
            violations.append(f"request '{request_id}': transaction {record.txn_id} carries request id '{carried_id}'")


def _request_txn_id(txn, dbs, request_id: str) -> int:
    """The transaction the request's record names (0: no record)."""
    for name in ("idempotency", "retained"):
        stored = txn.get(request_id.encode(), db=dbs[name])
        if stored is not None:
            return _decode_idempotency(stored).txn_id
    return 0


def _check_reversals(txn, dbs, journal: dict, violations: list[str], below: int) -> None:
    """Rollbacks within what was bought and earned. `journal` holds the archived entries that
    reversals name when the segments were read."""
    for key, reversal in _records(txn, dbs["reversals"], _decode_reversal):
        txn_id = int.from_bytes(key, "big")
        original = journal.get(txn_id)
        if original is None and txn_id < below:
            continue  # archived, and the segments were not read (or their check says why)
        if original is None:
            violations.append(f"transaction {txn_id}: reversal state without a transaction")
            continue
        for line in original.lines:
            returned = reversal.returned_qty.get(line.line_no, 0)
            if returned > line.qty_milli:
                violations.append(f"account {original.account_id}: transaction {txn_id} line {line.line_no} "
                                  f"returned {returned} of {line.qty_milli}")
        clawed = sum(journal[rollback_id].clawed for rollback_id in reversal.rollback_ids if rollback_id in journal)
        credited = original.earned + max(original.adjusted, 0)  # an adjustment's credit is taken back too
        if clawed > credited:
            violations.append(f"account {original.account_id}: transaction {txn_id} clawed back {clawed} "
                              f"of {credited} credited")


def _check_statements(accounts: dict, journal: _Journal, naming: dict[str, int], violations: list[str],
                      carried: _Carried) -> None:
    """Every statement adds up to its balance, and names every entry about its account: the walk
    along its links finds as many entries naming it as the journal holds (`naming`); only when it
    does not is the journal read again, for that account, to say which."""
    for account in accounts.values():
        checkpoint = carried.checkpoints.get(account.account_id, archive_state.Checkpoint())
        seen = _check_statement(account, journal, violations, carried.below, checkpoint)
        if len(seen) != naming.get(account.account_id, 0):
            for entry in journal.values():
                if account.account_id in (entry.account_id, entry.member_id) and entry.txn_id not in seen:
                    violations.append(f"account {account.account_id}: transaction {entry.txn_id} names the "
                                      "account but is not on its statement")


def _check_statement(account, journal: dict, violations: list[str], below: int, checkpoint) -> set[int]:
    """Walk the account's statement, newest first: its entries' amounts against the account's
    points, each entry's against what it moved; below the archive boundary `below` the
    checkpoint carries on. Returns the ids on the statement."""
    me = account.account_id
    seen: set[int] = set()
    shown_total = checkpoint.points
    txn_id = account.last_txn_id
    while txn_id >= below and txn_id:
        entry = journal.get(txn_id)
        if entry is None:
            violations.append(f"account {me}: statement links to transaction {txn_id}, which is missing")
            break
        if me in (entry.account_id, entry.member_id):
            seen.add(txn_id)
        shown = rec.statement_change(entry, me)
        shown_total += shown
        if entry.account_id == me:
            moved = sum(posting.delta for posting in entry.postings) - entry.debt_delta
            if shown != moved:
                kind = TxnKind(entry.kind).name.lower()
                violations.append(f"account {me}: transaction {txn_id} ({kind}) shows {shown:+} points on the "
                                  f"statement, its lots and debt moved {moved:+}")
        previous = entry.prev_id if entry.account_id == me else entry.member_prev_id
        if previous >= txn_id:  # ids grow with time: a link forward would loop
            violations.append(f"account {me}: statement links transaction {txn_id} to a later one, {previous}")
            break
        txn_id = previous
    if txn_id < max(below, 1) and txn_id != checkpoint.last_txn_id:  # it ended: in the archive, or nowhere
        violations.append(f"account {me}: statement crosses the archive boundary at transaction {txn_id}, "
                          f"its checkpoint at {checkpoint.last_txn_id}")
    points = account.active + account.pending - account.debt
    if shown_total != points:
        violations.append(f"account {me}: statement adds up to {shown_total} points, expected {points} "
                          f"(active {account.active} + pending {account.pending} - debt {account.debt})")
    return seen


def _replay_hold(entry, fates: dict[int, str]) -> None:
    """`fates` (what the archive and the entries before `entry` decided) with `entry` replayed."""
    if entry.kind == TxnKind.HOLD:
        fates[entry.txn_id] = "held"
    for hold_id in entry.captured_hold_ids:
        fates[hold_id] = "captured"
    if entry.kind == TxnKind.ROLLBACK and fates.get(entry.reverses) == "held":
        fates[entry.reverses] = "voided"


def ledger_summary(txn, dbs) -> dict[str, int]:
    return {name: txn.stat(dbs[name])["entries"] for name in ("accounts", "lots", "holds", "journal", "idempotency", "retained")}
