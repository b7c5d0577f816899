"""`kassa partitions split`: a ledger of P partitions (1: the plain one) made into one of P2, offline.

Every account goes to the partition a hash of its pool's id picks (a group's members with it), with
everything that is its own: record, cards and phone, lots, holds, journal entries (their transaction
ids unchanged: answers carry them), the idempotency records and reversals of those entries, outbox
records, counters. What belongs to no account goes to every partition: the ruleset, promo codes,
refusals and tombstones (a retry or a late original lands wherever it routes). A counter is split by
what the entries each partition holds counted into it (`kassa verify` replays them per partition);
a shared one (budget, code uses) gets its escrow bank re-split: each partition's slice is what it
spent, the bank the rest of the cap.

The new ledger is written beside the old one and takes its place at the end; the old one is kept as
`<ledger.path>.before-split-<P>` for the operator to delete. It is read whole into memory: a tool for
ledgers of up to some million accounts.
"""

from __future__ import annotations

import os
from collections import defaultdict

import lmdb

from kassa.core_ext import records as rec
from kassa.core_ext.escrow import SHARED_PREFIXES, slice_key
from kassa.core_ext.escrow import _BANK, _CAP  # the bank's own record keys
from kassa.core_ext.journal_archive import archive_dir_of
from kassa.core_ext.ledger import DB_NAMES, MAX_DBS
from kassa.core_ext.ledger.core import NEXT_TXN_KEY
from kassa.core_ext.model import IdKind
from kassa.core_ext.outbox import DONE_PREFIX, OUTBOX_DB
from kassa.core_ext.partitions import (
    DIRECTORY_NAME, Directory, first_txn_id, home_partition, partition_path, place_key, stored_partitions,
)

EVERY = -1  # a placement: every new partition
MAP_SIZE = "map_size_bytes"  # (in what `_read` returns) the old partition's map: each new one starts at the largest
ALL_DBS = DB_NAMES + (OUTBOX_DB,)


class SplitRefused(Exception):
    """The ledger cannot be split as it is; the message says what to do."""


def source_paths(root: str, partitions: int) -> list[str]:
    return [root] if partitions == 1 else [partition_path(root, index) for index in range(partitions)]


def _read(path: str) -> dict[str, list[tuple[bytes, bytes]]]:
    env = lmdb.open(path, max_dbs=MAX_DBS, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            tables = {MAP_SIZE: env.info()["map_size"]}
            for name in ALL_DBS:
                try:
                    db = env.open_db(name, txn=txn, create=False)
                except lmdb.NotFoundError:
                    tables[name.decode()] = []
                    continue
                tables[name.decode()] = list(txn.cursor(db=db))
            return tables
    finally:
        env.close()


class _Plan:
    """Where each record of the old partitions goes, and what each new one holds."""

    def __init__(self, partitions_to: int):
        self.partitions = partitions_to
        self.out = [defaultdict(dict) for _ in range(partitions_to)]  # [partition][db name][key] = value
        self.account_place: dict[str, int] = {}
        self.entry_place: dict[int, int] = {}
        self.request_place: dict[bytes, int] = {}
        self.contributions = [defaultdict(int) for _ in range(partitions_to)]  # counter deltas of the entries
        self.counters: dict[bytes, int] = defaultdict(int)  # summed over the old partitions
        self.escrow_caps: dict[bytes, int] = {}

    def put(self, place: int, name: str, key: bytes, value: bytes) -> None:
        for index in (range(self.partitions) if place == EVERY else (place,)):
            self.out[index][name][key] = value


def plan_split(tables: list[dict], partitions_to: int) -> _Plan:
    plan = _Plan(partitions_to)
    for table in tables:
        for key, value in table["accounts"]:
            account = rec.decode_account(value)
            pool = account.parent_id or account.account_id
            plan.account_place[account.account_id] = home_partition(pool, partitions_to)
    for table in tables:
        _place_account_records(plan, table)
    for table in tables:
        _place_requests(plan, table)
    for table in tables:
        for key, value in table["counters"]:
            plan.counters[key] += int.from_bytes(value, "big", signed=True)
    _place_counters(plan)
    return plan


def _place_account_records(plan: _Plan, table: dict) -> None:
    place = plan.account_place
    for key, value in table["accounts"]:
        plan.put(place[key.decode()], "accounts", key, value)
    for key, value in table["idents"]:
        plan.put(place[rec.decode_ident(value).account_id], "idents", key, value)
    for key, value in table["lots"]:
        plan.put(place[rec.decode_lot(value).account_id], "lots", key, value)
    for key, value in table["holds"]:
        plan.put(place[rec.decode_hold(value).account_id], "holds", key, value)
    for key, value in table["journal"]:
        entry = rec.decode_txn(value)
        where = place.get(entry.account_id, EVERY)
        plan.entry_place[entry.txn_id] = where
        plan.put(where, "journal", key, value)
        for index in (range(plan.partitions) if where == EVERY else (where,)):
            for counter, delta in entry.counters:
                plan.contributions[index][counter] += delta
    for key, value in table["codes"]:
        plan.put(EVERY, "codes", key, value)
    for key, value in table["meta"]:
        if key != NEXT_TXN_KEY:
            plan.put(EVERY, "meta", key, value)


def _place_requests(plan: _Plan, table: dict) -> None:
    for key, value in table["idempotency"]:
        record = rec.decode_idempotency(value)
        where = plan.entry_place.get(record.txn_id, EVERY) if record.txn_id else EVERY
        plan.request_place[key] = where
        plan.put(where, "idempotency", key, value)
    for key, value in table["reversals"]:
        plan.put(plan.entry_place.get(int.from_bytes(key, "big"), EVERY), "reversals", key, value)
    for key, value in table["aging"]:
        plan.put(plan.request_place.get(key[8:], EVERY), "aging", key, value)
    for key, value in table["outbox"]:
        if not key.startswith(DONE_PREFIX):
            raise SplitRefused("an outbox holds work to relay; start the server once (it relays at start), "
                               "stop it, then split")
        plan.put(plan.request_place.get(key[len(DONE_PREFIX):], EVERY), "outbox", key, value)


def _place_counters(plan: _Plan) -> None:
    """Each new partition holds what its entries counted; what no entry there counted (the entries of
    compacted requests) goes to the account's partition, or to partition 0 for a shared counter."""
    for key, total in plan.counters.items():
        counted = [plan.contributions[index].get(key, 0) for index in range(plan.partitions)]
        owner = plan.account_place.get(key.split(b"\0", 1)[1].decode(), 0) if b"\0" in key else 0
        counted[owner] += total - sum(counted)
        for index, value in enumerate(counted):
            if value:
                plan.out[index]["counters"][key] = value.to_bytes(8, "big", signed=True)


def _write_partition(path: str, index: int, tables: dict, map_size_bytes: int) -> None:
    os.makedirs(path)
    env = lmdb.open(path, map_size=map_size_bytes, max_dbs=MAX_DBS)
    try:
        with env.begin(write=True) as txn:
            highest = 0
            for name in ALL_DBS:
                db = env.open_db(name, txn=txn)
                for key, value in sorted(tables.get(name.decode(), {}).items()):
                    txn.put(key, value, db=db)
                    if name == b"journal":
                        highest = max(highest, int.from_bytes(key, "big"))
            meta = env.open_db(b"meta", txn=txn)
            txn.put(NEXT_TXN_KEY, max(first_txn_id(index), highest + 1).to_bytes(8, "big"), db=meta)
    finally:
        env.close()


def _write_directory(root: str, plan: _Plan, caps: dict[bytes, int]) -> None:
    directory = Directory(root, plan.partitions)
    places = [(place_key(IdKind.ACCOUNT, account_id), index) for account_id, index in plan.account_place.items()]
    for index, tables in enumerate(plan.out):
        places += [(key, index) for key in tables.get("idents", {})]
    directory.record(places)
    with directory.env.begin(write=True) as txn:
        for key, cap in caps.items():  # the bank re-split: each slice what its partition spent
            slices = [int.from_bytes(plan.out[index]["counters"].get(key, b"\0" * 8), "big", signed=True)
                      for index in range(plan.partitions)]
            txn.put(_CAP + key, cap.to_bytes(8, "big", signed=True), db=directory.escrow)
            txn.put(_BANK + key, (cap - sum(slices)).to_bytes(8, "big", signed=True), db=directory.escrow)
            for index, spent in enumerate(slices):
                txn.put(slice_key(key, index), spent.to_bytes(8, "big", signed=True), db=directory.escrow)
    directory.made()
    directory.close()


def _shared_caps(plan: _Plan, old_escrow: dict[bytes, bytes], program) -> dict[bytes, int]:
    """The cap of every shared counter in use: the bank's (P > 1), else the program's or the code's."""
    caps = {}
    for key in plan.counters:
        if not key.startswith(SHARED_PREFIXES):
            continue
        stored = old_escrow.get(_CAP + key)
        if stored is not None:
            caps[key] = int.from_bytes(stored, "big", signed=True)
        elif key.startswith(b"C:"):
            code = plan.out[0]["codes"].get(key[2:])
            caps[key] = rec.decode_promo_code(code).uses_total if code else 0
        elif key[2:].decode() in program.limits:
            limits, discount = program.limits[key[2:].decode()]
            caps[key] = limits.budget_minor if discount else limits.budget_points
        else:
            caps[key] = 0
        if not caps[key]:
            raise SplitRefused(f"the shared counter {key!r} has no cap in the ledger or the rule files")
    return caps


def split(root: str, partitions_to: int, program) -> dict:
    """Split the (stopped) ledger at `root`; returns a summary. Raises SplitRefused."""
    partitions_from = stored_partitions(root)
    if partitions_from is None:
        raise SplitRefused(f"no ledger at {root}")
    if partitions_to <= partitions_from:
        raise SplitRefused(f"--to: the ledger has {partitions_from} partition(s); split to more")
    paths = source_paths(root, partitions_from)
    if any(archive_dir_of(path).exists() and any(archive_dir_of(path).iterdir()) for path in paths):
        raise SplitRefused("the journal has archive segments; splitting an archived ledger is not supported yet")
    tables = [_read(path) for path in paths]
    old_escrow = {}
    if partitions_from > 1:
        env = lmdb.open(os.path.join(root, DIRECTORY_NAME), max_dbs=8, readonly=True, lock=False)
        with env.begin() as txn:
            old_escrow = dict(txn.cursor(db=env.open_db(b"escrow", txn=txn, create=False)))
        env.close()
    plan = plan_split(tables, partitions_to)
    caps = _shared_caps(plan, old_escrow, program)
    staging = root.rstrip("/") + ".split-staging"
    if os.path.exists(staging):
        raise SplitRefused(f"{staging} exists (an earlier split cut short?); remove it and run again")
    os.makedirs(staging)
    for index, tables_out in enumerate(plan.out):
        _write_partition(partition_path(staging, index), index, tables_out, max(t[MAP_SIZE] for t in tables))
    _write_directory(staging, plan, caps)
    kept = f"{root.rstrip('/')}.before-split-{partitions_from}"
    os.rename(root, kept)
    os.rename(staging, root)
    return {"ok": True, "partitions_from": partitions_from, "partitions": partitions_to,
            "accounts": len(plan.account_place), "kept": kept}
