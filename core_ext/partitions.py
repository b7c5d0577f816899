"""Partitions: P ledgers under `ledger.path`, each its own LMDB environment and writer.

With `ledger.partitions = 1` none of this is used: the ledger is the one environment at
`ledger.path`, as it always was. With P > 1 the path holds `p0` ... `p<P-1>` (a `Ledger` each) and a
`directory` environment that maps accounts, cards and phones to their partition and keeps the escrow
banks of shared counters (core_ext/escrow.py).

An operation goes to the partition of its customer's pool; every customer of a group is in the group's
partition. A new account goes where its directory entry says, or else to the partition a hash of its
id (of the request id, when the server names it) picks. Transaction ids carry their partition in their
top bits (`partition_of_txn`), so a Rollback by transaction id goes straight there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib

import lmdb

from kassa.core_ext.escrow import ESCROW_DB, Escrow, EscrowShort, check_banks, may_release, release_idle
from kassa.core_ext.ledger import Ledger, LedgerError, ident_key
from kassa.core_ext.limits import PARTITION_SHIFT_BITS
from kassa.core_ext.model import Code, CreateAccountOp, IdKind, IssueCardOp

DIRECTORY_NAME = "directory"
DIRECTORY_MAP_SIZE_BYTES = 16 * 1024**3  # the directory's map (sparse): some 50 bytes an account, card or phone
DIRECTORY_DBS_MAX = 4
PLACES_DB, META_DB = b"places", b"meta"
PARTITIONS_KEY = b"partitions"
ESCROW_RETRIES_MAX = 16  # applications of one group that another partition's refill can cut short
REPAIRS_LOGGED_MAX = 20  # directory entries put back at open that the log names one by one

log = logging.getLogger("kassa.partitions")


def partition_path(root: str, index: int) -> str:
    return os.path.join(root, f"p{index}")


def first_txn_id(index: int) -> int:
    return (index << PARTITION_SHIFT_BITS) + 1


def partition_of_txn(txn_id: int) -> int:
    return txn_id >> PARTITION_SHIFT_BITS


def home_partition(name: str, partitions: int) -> int:
    """The partition a new account named `name` (its id, else its request id) is placed in."""
    return zlib.crc32(name.encode()) % partitions


def place_key(kind: int, value: str) -> bytes:
    return b"a:" + value.encode() if kind == IdKind.ACCOUNT else ident_key(kind, value)


class PartitionsMismatch(Exception):
    """The ledger at `ledger.path` was made with another number of partitions."""


def stored_partitions(root: str) -> int | None:
    """How many partitions the ledger at `root` has: 1 for a plain ledger, None when there is none."""
    if os.path.exists(os.path.join(root, "data.mdb")):
        return 1
    directory = os.path.join(root, DIRECTORY_NAME)
    if not os.path.exists(os.path.join(directory, "data.mdb")):
        return None
    env = lmdb.open(directory, max_dbs=DIRECTORY_DBS_MAX, readonly=True)
    try:
        with env.begin() as txn:
            stored = txn.get(PARTITIONS_KEY, db=env.open_db(META_DB, txn=txn, create=False))
    except lmdb.NotFoundError:  # another worker is making the ledger right now
        return None
    finally:
        env.close()
    return None if stored is None else int(stored)


class Directory:
    """Where each account, card and phone lives, and the escrow banks: read-mostly, small."""

    def __init__(self, root: str, partitions: int, sync: bool = True):
        path = os.path.join(root, DIRECTORY_NAME)
        os.makedirs(path, exist_ok=True)
        self.partitions = partitions
        self.env = lmdb.open(path, map_size=DIRECTORY_MAP_SIZE_BYTES, max_dbs=DIRECTORY_DBS_MAX, sync=sync)
        self.places = self.env.open_db(PLACES_DB)
        self.escrow = self.env.open_db(ESCROW_DB)
        self.meta = self.env.open_db(META_DB)
        with self.env.begin() as txn:
            stored = txn.get(PARTITIONS_KEY, db=self.meta)
        # A new ledger (or one whose making was cut short): its partitions are made now, and the
        # number of them is written once they all exist (`made`).
        self.created = stored is None
        if stored is not None and int(stored) != partitions:
            raise PartitionsMismatch(f"the ledger at {root} has {int(stored)} partitions, not ledger.partitions = "
                                     f"{partitions}; changing it is offline")

    def made(self) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(PARTITIONS_KEY, str(self.partitions).encode(), db=self.meta)

    def lookup(self, kind: int, value: str, txn=None) -> int | None:
        """The partition of an account, card or phone, or None; in `txn` (a read transaction of
        the directory, for many look-ups: 0.3 against 3 us each) or in one of its own."""
        if txn is None:
            with self.env.begin() as txn:
                stored = txn.get(place_key(kind, value), db=self.places)
        else:
            stored = txn.get(place_key(kind, value), db=self.places)
        return None if stored is None else int.from_bytes(stored, "big")

    def record(self, places: list[tuple[bytes, int]]) -> None:
        """Write directory entries (idempotent: a replayed creation writes the same entry again)."""
        with self.env.begin(write=True) as txn:
            for key, partition in places:
                txn.put(key, partition.to_bytes(2, "big"), db=self.places)

    def record_missing(self, places: list[tuple[bytes, int]]) -> None:
        """Write the entries of `places` that are still missing: another worker's writer may have
        written (or moved) one since it was found missing, and its entry stands."""
        with self.env.begin(write=True) as txn:
            for key, partition in places:
                txn.put(key, partition.to_bytes(2, "big"), db=self.places, overwrite=False)

    def home(self, name: str) -> int:
        return home_partition(name, self.partitions)

    def close(self) -> None:
        self.env.close()


class PartitionWriter:
    """One partition's writer, for its group committer: applies a group to its ledger, again when a
    shared counter's bank emptied meanwhile, and records the accounts and cards it created."""

    def __init__(self, ledger: Ledger, directory: Directory, index: int):
        self.ledger = ledger
        self._directory = directory
        self._index = index

    def apply(self, ops: list, now_ms: int, take=None) -> list:
        applied_at = [now_ms]

        def take_timed():
            taken, at_ms = take()
            applied_at[0] = at_ms
            return taken, at_ms

        try:
            self.ledger.escrow.begin_group()
            outcomes = self.ledger.apply(ops, now_ms, None if take is None else take_timed)
        except EscrowShort:
            outcomes = self._apply_again(ops, applied_at[0])
        self._record_places(ops, outcomes)
        return outcomes

    def _apply_again(self, ops: list, now_ms: int) -> list:
        """`take` already joined its operations to `ops`; the time stays the group's."""
        for _ in range(ESCROW_RETRIES_MAX - 1):
            try:
                self.ledger.escrow.begin_group()
                return self.ledger.apply(ops, now_ms)
            except EscrowShort:
                continue
        raise LedgerError(Code.ABORTED, "shared counters kept changing under this group; send it again")

    def release_slack(self) -> int:
        """Give this partition's slack of emptied banks back (escrow.release_idle), holding its
        writer lock so that no spend of it runs meanwhile; returns the units given back."""
        if not may_release(self._directory.env, self._directory.escrow, self._index):
            return 0  # nothing to give back: the writer lock is not taken
        _, dbs = self.ledger.raw_transaction()
        counters = dbs["counters"]
        with self.ledger.env.begin(write=True) as txn:

            def spent_of(key: bytes) -> int:
                stored = txn.get(key, db=counters)
                return 0 if stored is None else int.from_bytes(stored, "big", signed=True)

            return release_idle(self._directory.env, self._directory.escrow, self._index, spent_of)

    def _record_places(self, ops: list, outcomes: list) -> None:
        places = []
        for op, outcome in zip(ops, outcomes):
            if outcome.code != Code.OK:
                continue
            if type(op) is CreateAccountOp:
                places.append((place_key(IdKind.ACCOUNT, outcome.body.account_id), self._index))
                if op.phone:
                    places.append((place_key(IdKind.PHONE, op.phone), self._index))
            elif type(op) is IssueCardOp:
                places.append((place_key(IdKind.CARD, op.card), self._index))
        if places:
            self._directory.record(places)


class PartitionedLedger:
    """The P ledgers and the directory, with the read side of `Ledger` routed by customer."""

    def __init__(self, root: str, program, map_size_bytes: int, hold_ttl_s: int, sync: bool = True, *,
                 partitions: int, **options):
        self.path = str(root)
        self.directory = Directory(self.path, partitions, sync)
        self.parts = []
        for index in range(partitions):
            if not self.directory.created and not os.path.exists(os.path.join(partition_path(self.path, index),
                                                                            "data.mdb")):
                self.directory.close()
                raise PartitionsMismatch(f"partition p{index} of the ledger at {self.path} is missing; restore it "
                                         "from a backup (kassa backup copies every partition)")
            ledger = Ledger(partition_path(self.path, index), program, map_size_bytes, hold_ttl_s, sync, **options)
            ledger.first_txn_id = first_txn_id(index)
            ledger.escrow = Escrow(self.directory.env, self.directory.escrow, index, partitions)
            self.parts.append(ledger)
        if self.directory.created:
            self.directory.made()
        self.repaired = self.repair_directory()
        self.writers = [PartitionWriter(ledger, self.directory, index) for index, ledger in enumerate(self.parts)]

    @property
    def program(self):
        return self.parts[0].program

    @property
    def retention(self):
        return self.parts[0].retention

    @retention.setter
    def retention(self, retention) -> None:
        for ledger in self.parts:
            ledger.retention = retention

    def partition_of(self, customer, txn=None) -> int:
        """The partition of a customer: its directory entry, else (an account never created here
        that a creation would place by its id) its home; an unknown card or phone goes to 0, which
        answers NOT_FOUND."""
        found = self.directory.lookup(customer.kind, customer.value, txn)
        if found is not None:
            return found
        return self.directory.home(customer.value) if customer.kind == IdKind.ACCOUNT else 0

    def calculate(self, query, now_ms: int):
        return self.parts[self.partition_of(query.customer)].calculate(query, now_ms)

    def account(self, customer, now_ms: int):
        return self.parts[self.partition_of(customer)].account(customer, now_ms)

    def statement(self, customer, page_size, before_id):
        return self.parts[self.partition_of(customer)].statement(customer, page_size, before_id)

    def stats(self) -> dict:
        totals: dict = {}
        for ledger in self.parts:
            for name, value in ledger.stats().items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def reader_check(self) -> int:
        return sum(ledger.reader_check() for ledger in self.parts)

    def refresh_program(self) -> bool:
        return any([ledger.refresh_program() for ledger in self.parts])

    def adopt_rule_files(self, now_ms: int) -> bool:
        return any([ledger.adopt_rule_files(now_ms) for ledger in self.parts])

    def verify(self, now_ms: int) -> list[str]:
        violations = []
        for index, ledger in enumerate(self.parts):
            violations += [f"partition {index}: {violation}" for violation in ledger.verify(now_ms)]
        return violations + self.verify_directory()

    def verify_directory(self) -> list[str]:
        """The cross-partition invariants: banks and slices sum to caps, no slice overspent, and every
        directory entry names an account, card or phone its partition has."""
        with contextlib.ExitStack() as stack:
            txns = []
            for ledger in self.parts:
                transaction, dbs = ledger.raw_transaction()
                txns.append((stack.enter_context(transaction), dbs))
            txn = stack.enter_context(self.directory.env.begin())
            return check_directory(txn, self.directory, txns)

    def repair_directory(self) -> list[tuple[bytes, int]]:
        """Put back the directory entries a crash between a partition's commit and `_record_places`
        left out (issue 18): the partition is the truth. One read pass over every partition's
        accounts and identifiers; returns the (key, partition) entries written, and logs them."""
        missing = []
        for index, ledger in enumerate(self.parts):
            transaction, dbs = ledger.raw_transaction()
            with transaction as part_txn, self.directory.env.begin() as txn:
                missing += [(key, index) for key, named in unlisted(part_txn, dbs, txn, self.directory.places, index)
                            if named is None]
        if missing:
            self.directory.record_missing(missing)
            log.warning("directory entries put back at open (their partition committed them, the directory "
                        "write was cut short)", extra={"fields": {
                            "count": len(missing),
                            "entries": [f"{key!r} -> p{index}" for key, index in missing[:REPAIRS_LOGGED_MAX]]}})
        return missing

    def close(self) -> None:
        for ledger in self.parts:
            ledger.close()
        self.directory.close()


def partition_keys(part_txn, dbs):
    """Every directory key a partition's records call for: `a:<id>` of each account, each card's and
    phone's identifier key as it is."""
    with part_txn.cursor(db=dbs["accounts"]) as cursor:
        for key in cursor.iternext(values=False):
            yield b"a:" + bytes(key)
    with part_txn.cursor(db=dbs["idents"]) as cursor:
        for key in cursor.iternext(values=False):
            yield bytes(key)


def unlisted(part_txn, dbs, txn, places_db, index: int):
    """(key, the partition its entry names, or None) of each key of partition `index` whose directory
    entry (in `txn`) does not name it."""
    for key in partition_keys(part_txn, dbs):
        stored = txn.get(key, db=places_db)
        named = None if stored is None else int.from_bytes(stored, "big")
        if named != index:
            yield key, named


def check_directory(txn, directory, txns) -> list[str]:
    """`txns`: (read transaction, dbs) of each partition, in order."""

    def spent_of(partition: int, key: bytes) -> int:
        part_txn, dbs = txns[partition]
        stored = part_txn.get(key, db=dbs["counters"])
        return 0 if stored is None else int.from_bytes(stored, "big", signed=True)

    violations = check_banks(txn, directory.escrow, spent_of)
    with txn.cursor(db=directory.places) as cursor:
        for key, value in cursor:
            partition = int.from_bytes(value, "big")
            if partition >= len(txns):
                violations.append(f"directory {key!r}: partition {partition} does not exist")
                continue
            part_txn, dbs = txns[partition]
            found = part_txn.get(key[2:], db=dbs["accounts"]) if key.startswith(b"a:") else \
                part_txn.get(key, db=dbs["idents"])
            if found is None:
                violations.append(f"directory {key!r}: partition {partition} does not have it")
    return violations + check_listed(txn, directory, txns)


def check_listed(txn, directory, txns) -> list[str]:
    """Every account, card and phone of a partition has its directory entry naming that partition.
    A writer records entries just after its commit (`_record_places`), so a key seen unlisted in the
    snapshot is looked up again in a fresh directory transaction before it counts."""
    suspects = []
    for index, (part_txn, dbs) in enumerate(txns):
        suspects += [(key, index) for key, _ in unlisted(part_txn, dbs, txn, directory.places, index)]
    if not suspects:
        return []
    violations = []
    with directory.env.begin() as fresh:
        for key, index in suspects:
            stored = fresh.get(key, db=directory.places)
            named = None if stored is None else int.from_bytes(stored, "big")
            if named is None:
                violations.append(f"partition {index} has {key!r} and the directory has no entry for it")
            elif named != index:
                violations.append(f"partition {index} has {key!r} and the directory names partition {named}")
    return violations


# -- Tools: verify and backup of a partitioned ledger (server/cli.py) ----------------------------


class _Opened:
    """Every partition's environment and the directory, opened by a tool beside running servers."""

    def __init__(self, root: str, partitions: int):
        from kassa.core_ext.ledger import DB_NAMES, MAX_DBS

        self.envs, self.dbs = [], []
        for index in range(partitions):
            env = lmdb.open(partition_path(root, index), max_dbs=MAX_DBS, create=False)
            self.envs.append(env)
            self.dbs.append({name.decode(): env.open_db(name) for name in DB_NAMES})
        self.directory = Directory(root, partitions)

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.directory.close()

    def snapshot(self) -> list:
        """Read transactions of every partition and the directory (last) taken while every
        partition's writer lock is held: between commits everywhere, so what a partition spent is
        within its slice in the directory and every directory entry's record is there."""
        writers = []
        try:
            for env in self.envs:
                writers.append(env.begin(write=True))
            return [env.begin() for env in self.envs] + [self.directory.env.begin()]
        finally:
            for writer in writers:
                writer.abort()


def verify_partitioned(root: str, partitions: int, now_ms: int) -> tuple[list[str], dict]:
    """Every partition's invariants, then the directory's; (violations, summary summed)."""
    from kassa.core_ext.journal_archive import archive_dir_of
    from kassa.core_ext.verify import check_ledger, ledger_summary

    opened = _Opened(root, partitions)
    txns = opened.snapshot()
    try:
        violations, summary = [], {}
        for index, (txn, dbs) in enumerate(zip(txns, opened.dbs)):
            archive = archive_dir_of(partition_path(root, index))
            violations += [f"partition {index}: {violation}" for violation in check_ledger(txn, dbs, now_ms, archive)]
            for name, count in ledger_summary(txn, dbs).items():
                summary[name] = summary.get(name, 0) + count
        violations += check_directory(txns[-1], opened.directory, list(zip(txns, opened.dbs)))
        return violations, {"partitions": partitions, **summary}
    finally:
        for txn in txns:
            txn.abort()
        opened.close()


def backup_partitioned(root: str, partitions: int, target: str) -> int:
    """Copy every partition and the directory from one snapshot (see `_Opened.snapshot`) into
    `target`, laid out as `ledger.path` is; returns the bytes written."""
    opened = _Opened(root, partitions)
    txns = opened.snapshot()
    try:
        written = 0
        for env, txn, name in zip(opened.envs + [opened.directory.env], txns,
                                  [f"p{index}" for index in range(partitions)] + [DIRECTORY_NAME]):
            os.makedirs(os.path.join(target, name))
            env.copy(os.path.join(target, name), compact=True, txn=txn)
            written += os.path.getsize(os.path.join(target, name, "data.mdb"))
        return written
    finally:
        for txn in txns:
            txn.abort()
        opened.close()
