"""Shared counters across partitions: escrow slices from a bank in the directory.

A campaign's budget (`B:<campaign>`) and a promo code's total uses (`C:<code>`) are caps shared by
every partition. Each partition counts what it spent in its own `counters` database, as with one
ledger; what it may spend is its **slice**, granted from a **bank** kept in the directory
environment (the escrow method, O'Neil 1986; the demarcation protocol). The bank and the slices are
written together in one directory transaction, so `bank + sum(slices) == cap` always holds, and a
partition never spends past its slice, so the partitions together never spend past the cap.

A partition asks the bank only when a spend passes its slice, inside its own write transaction:
it takes what it needs and a chunk beyond it, the chunk a share of what the bank holds, so chunks
shrink near the end and the last units are granted one by one. When the bank is empty a partition
gives its unspent slack back at its next spend, and a partition with no spends gives it back within
a second (`release_idle`, run by every worker for every partition), so the slack of one partition is
not stranded while another refuses: a budget of 1,000 is granted to exactly 1,000.

A refill committed in the directory whose partition transaction then aborts (a crash, a retry)
leaves slack in that partition's slice, never an overspend. When another partition emptied the bank
between the evaluation that allowed a spend and the spend itself, the spend raises `EscrowShort`:
the partition's writer applies the group again, and its evaluation then sees the smaller bank.
"""

from __future__ import annotations

import lmdb

from kassa.core_ext.ledger import LedgerError
from kassa.core_ext.model import Code

ESCROW_DB = b"escrow"
SHARED_PREFIXES = (b"B:", b"C:")  # counters whose cap all partitions share: budgets, a code's total uses
REFILL_SHARE_DIVISOR = 4  # a refill's chunk beyond the need: the bank's rest / (this * partitions)
_CAP, _BANK, _SLICE = b"cap\0", b"bank\0", b"slice\0"


class EscrowShort(LedgerError):
    """The bank no longer covers a spend its evaluation allowed: apply the group again."""

    def __init__(self, key: bytes):
        super().__init__(Code.ABORTED, f"shared counter {key!r}: the bank emptied meanwhile; apply again")


def _int(stored) -> int:
    return int.from_bytes(stored, "big", signed=True)


def _bytes(value: int) -> bytes:
    return value.to_bytes(8, "big", signed=True)


def slice_key(key: bytes, partition: int) -> bytes:
    return _SLICE + key + b"\0" + partition.to_bytes(2, "big")


def read_bank(txn, db, key: bytes, cap: int) -> tuple[int, int | None]:
    """(bank, stored cap) of `key` at `cap`: a counter never seen has all of `cap` in its bank; a cap
    that changed since (a new ruleset's budget) moves the bank by the difference."""
    stored_cap = txn.get(_CAP + key, db=db)
    if stored_cap is None:
        return cap, None
    return _int(txn.get(_BANK + key, db=db)) + cap - _int(stored_cap), _int(stored_cap)


class Escrow:
    """One partition's view of the bank: `left` for evaluations, `spend` inside its writes."""

    def __init__(self, env, db, partition: int, partitions: int):
        self._env = env
        self._db = db
        self.partition = partition
        self._partitions = partitions
        self._caps: dict[bytes, int] = {}  # the cap each shared counter had when last evaluated
        # The highest value each shared counter had in the group being applied, the committed one
        # included: a give-back never goes below it, as the group may yet abort.
        self._highest: dict[bytes, int] = {}

    def begin_group(self) -> None:
        """Before each application of a group (by the partition's writer)."""
        self._highest.clear()

    def left(self, key: bytes, cap: int, spent: int) -> int:
        """What this partition may still spend of `key`: its slice's slack and the whole bank."""
        if not key.startswith(SHARED_PREFIXES):
            return cap - spent
        self._caps[key] = cap
        with self._env.begin() as txn:
            bank, _ = read_bank(txn, self._db, key, cap)
            granted = self._granted(txn, key)
        return granted - spent + bank

    def _granted(self, txn, key: bytes) -> int:
        stored = txn.get(slice_key(key, self.partition), db=self._db)
        return 0 if stored is None else _int(stored)

    def spend(self, key: bytes, spent: int, delta: int) -> None:
        """This partition's counter `key` becomes `spent` (by `delta`): refill the slice when it
        no longer covers it (or raise `EscrowShort`); give back the slack when the bank is empty."""
        if not key.startswith(SHARED_PREFIXES):
            return
        highest = self._highest.get(key, spent - delta)  # first touched: it was `spent - delta` before
        self._highest[key] = max(highest, spent)
        if delta <= 0:
            return  # a give-back stays in the slice, spent again here or released at the next spend
        cap = self._caps.get(key)
        with self._env.begin() as txn:
            if cap is None:  # not evaluated in this process: the cap the bank holds
                stored = txn.get(_CAP + key, db=self._db)
                if stored is None:  # the ledger spends only what an evaluation allowed: a bug
                    raise LedgerError(Code.INTERNAL, f"shared counter {key!r} spent before any evaluation")
                cap = _int(stored)
            bank, stored_cap = read_bank(txn, self._db, key, cap)
            granted = self._granted(txn, key)
        if spent <= granted and (bank > 0 or granted <= self._highest[key]) and stored_cap == cap:
            return  # covered, and nothing to give back: no directory write
        try:
            with self._env.begin(write=True) as txn:
                self._settle(txn, key, cap, spent, self._highest[key])
        except lmdb.Error as error:
            raise LedgerError(Code.UNAVAILABLE, f"the directory's escrow bank cannot be written: {error}") from error

    def _settle(self, txn, key: bytes, cap: int, spent: int, kept: int) -> None:
        """Refill the slice to cover `spent`; at the end give back what it holds beyond `kept`
        (at least `spent`: the highest the counter was in this group, which may yet abort)."""
        bank, _ = read_bank(txn, self._db, key, cap)
        granted = self._granted(txn, key)
        if spent > granted:
            need = spent - granted
            if need > bank:
                raise EscrowShort(key)
            take = need + (bank - need) // (REFILL_SHARE_DIVISOR * self._partitions)
            granted += take
            bank -= take
        if bank == 0 and granted > kept:  # the end: others may need what this slice holds
            bank, granted = granted - kept, kept
        txn.put(_CAP + key, _bytes(cap), db=self._db)
        txn.put(_BANK + key, _bytes(bank), db=self._db)
        txn.put(slice_key(key, self.partition), _bytes(granted), db=self._db)


def _emptied_slices(txn, db, partition: int) -> list[tuple[bytes, int]]:
    """(slice key, granted) of this partition's slices whose bank is empty."""
    suffix = b"\0" + partition.to_bytes(2, "big")
    with txn.cursor(db=db) as cursor:
        slices = [(stored_key, _int(value)) for stored_key, value in cursor
                  if stored_key.startswith(_SLICE) and stored_key.endswith(suffix)]
    return [(stored_key, granted) for stored_key, granted in slices
            if _int(txn.get(_BANK + stored_key[len(_SLICE):-len(suffix)], db=db)) == 0]


def may_release(env, db, partition: int) -> bool:
    """Whether `release_idle` may give anything back: a read, so that the writer lock is taken only then."""
    with env.begin() as txn:
        return any(granted > 0 for _, granted in _emptied_slices(txn, db, partition))


def release_idle(env, db, partition: int, spent_of) -> int:
    """Give back to the emptied banks this partition's slack (`spent_of(key)`: its counter, read
    while the caller holds its writer lock): the slack of a partition that sees no spend would
    otherwise stay out of reach of the others. Returns how many units went back."""
    released = 0
    with env.begin(write=True) as txn:
        for stored_key, granted in _emptied_slices(txn, db, partition):
            key = stored_key[len(_SLICE):-3]
            spent = spent_of(key)
            if granted > spent:
                txn.put(_BANK + key, _bytes(granted - spent), db=db)
                txn.put(stored_key, _bytes(spent), db=db)
                released += granted - spent
    return released


def check_banks(txn, db, spent_of) -> list[str]:
    """Violations of the cross-partition invariants: every shared counter's bank and slices sum to
    its cap, and no partition spent past its slice (`spent_of(partition, key)`: its counter)."""
    caps, banks, slices = {}, {}, {}
    with txn.cursor(db=db) as cursor:
        for stored_key, value in cursor:
            if stored_key.startswith(_CAP):
                caps[stored_key[len(_CAP):]] = _int(value)
            elif stored_key.startswith(_BANK):
                banks[stored_key[len(_BANK):]] = _int(value)
            elif stored_key.startswith(_SLICE):
                key, partition = stored_key[len(_SLICE):-3], int.from_bytes(stored_key[-2:], "big")
                slices.setdefault(key, {})[partition] = _int(value)
    violations = []
    for key, cap in caps.items():
        total = banks.get(key, 0) + sum(slices.get(key, {}).values())
        if total != cap:
            violations.append(f"escrow {key!r}: bank {banks.get(key, 0)} + slices {total - banks.get(key, 0)} "
                              f"is {total}, not its cap {cap}")
        for partition, granted in sorted(slices.get(key, {}).items()):
            spent = spent_of(partition, key)
            if spent > granted:
                violations.append(f"escrow {key!r}: partition {partition} spent {spent}, past its slice {granted}")
    return violations
