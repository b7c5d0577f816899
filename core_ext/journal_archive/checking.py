"""`kassa verify` over the archive: every listed segment is there, holds its checksum and what its
manifest and the index say, and the archived entries summed equal the checkpoints.

One pass reads every segment (streamed, block after block) and also answers what the journal's
own checks need from below the boundary: the archived entries the reversals and idempotency
records name, and the fate of holds whose HOLD entry was archived.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import msgspec

from kassa.core_ext import records as rec
from kassa.core_ext.compaction import counters_kept
from kassa.core_ext.journal_archive import segments, state
from kassa.core_ext.journal_archive.reading import previous_of
from kassa.core_ext.model import TxnKind


class Wanted(msgspec.Struct):
    """What the journal's checks ask of the archive."""

    entries: set[int]  # txn ids whose archived entries they read (reversals' originals and rollbacks)
    request_ids: dict[int, str]  # txn id -> the request id whose idempotency record names it
    hold_ids: set[int]  # holds still in the holds database whose HOLD entry was archived


class Found(msgspec.Struct):
    entries: dict[int, rec.TxnRec]
    hold_fates: dict[int, str]
    complete: bool  # every segment was read: the checks that need all of them ran


def check_archive(archive_dir: Path, txn, dbs: dict, wanted: Wanted, violations: list[str]) -> Found:
    index = state.read_index(txn, dbs)
    carried = state.Carried()
    found = Found({}, {}, True)
    chain: dict[str, int] = {}  # account -> its newest archived statement entry so far
    expected_first = 0
    for ref in index:
        if ref.first_txn_id < expected_first:
            violations.append(f"archive segment {ref.name}: starts at transaction {ref.first_txn_id}, "
                              f"inside the segment before it")
        expected_first = ref.last_txn_id + 1
        if not _segment_sound(Path(archive_dir), ref, violations):
            found.complete = False
            continue
        for line in segments.segment_lines(Path(archive_dir) / ref.name):
            entry = segments.entry_of_line(line)
            _follow_chain(entry, chain, ref.name, violations)
            _check_shown(entry, ref.name, violations)
            carried.add(entry)
            _answer(entry, wanted, found, ref.name, violations)
    if not found.complete:
        violations.append("archive: a segment is unreadable; its checkpoints and the entries it holds were not checked")
        return found
    below = state.read_below(lambda name, key: txn.get(key, db=dbs[name]))
    if below != state.archived_below(index):
        violations.append(f"archive: the boundary is at transaction {below}, the listed segments end before "
                          f"{state.archived_below(index)}")
    _check_checkpoints(txn, dbs, carried, violations)
    for txn_id, request_id in sorted(wanted.request_ids.items()):
        violations.append(f"request '{request_id}': transaction {txn_id} is missing from the journal and the archive")
    return found


def _segment_sound(directory: Path, ref: state.SegmentRef, violations: list[str]) -> bool:
    """The segment file exists, has the size and sha256 the index lists, and its manifest agrees."""
    path = directory / ref.name
    if not path.exists():
        violations.append(f"archive segment {ref.name}: listed in the ledger but missing from {directory}")
        return False
    found = segments.segment_sha256(path)
    if found != ref.sha256:
        violations.append(f"archive segment {ref.name}: sha256 expected {ref.sha256} (the ledger's index), "
                          f"found {found}: the file was changed or damaged")
        return False
    try:
        manifest = segments.read_manifest(directory, ref.name)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
        violations.append(f"archive segment {ref.name}: its manifest is unreadable ({error})")
        return False
    listed = (ref.first_txn_id, ref.last_txn_id, ref.entries, ref.bytes, ref.sha256)
    described = (manifest.first_txn_id, manifest.last_txn_id, manifest.entries, manifest.bytes, manifest.sha256)
    if listed != described:
        violations.append(f"archive segment {ref.name}: manifest says (first, last, entries, bytes, sha256) "
                          f"{described}, the ledger's index {listed}")
        return False
    return True


def _follow_chain(entry: rec.TxnRec, chain: dict[str, int], segment: str, violations: list[str]) -> None:
    """Each archived entry links to the account's archived entry before it: the statement is whole."""
    for account_id in (entry.account_id, entry.member_id):
        if not account_id:
            continue
        expected = chain.get(account_id, 0)
        found = previous_of(entry, account_id)
        if found != expected:
            violations.append(f"account {account_id}: archived transaction {entry.txn_id} ({segment}) links to "
                              f"{found}, expected {expected}")
        chain[account_id] = entry.txn_id


def _check_shown(entry: rec.TxnRec, segment: str, violations: list[str]) -> None:
    """What the entry shows on its account's statement is what its lots and debt moved."""
    shown = rec.statement_change(entry, entry.account_id)
    moved = sum(posting.delta for posting in entry.postings) - entry.debt_delta
    if shown != moved:
        violations.append(f"account {entry.account_id}: archived transaction {entry.txn_id} ({segment}) shows "
                          f"{shown:+} points on the statement, its lots and debt moved {moved:+}")


def _answer(entry: rec.TxnRec, wanted: Wanted, found: Found, segment: str, violations: list[str]) -> None:
    if entry.txn_id in wanted.entries:
        found.entries[entry.txn_id] = entry
    request_id = wanted.request_ids.pop(entry.txn_id, None)
    if request_id is not None and entry.request_id != request_id:
        violations.append(f"request '{request_id}': archived transaction {entry.txn_id} ({segment}) carries "
                          f"request id '{entry.request_id}'")
    if entry.kind == TxnKind.HOLD and entry.txn_id in wanted.hold_ids:
        found.hold_fates[entry.txn_id] = "held"
    for hold_id in entry.captured_hold_ids:
        if hold_id in wanted.hold_ids:
            found.hold_fates[hold_id] = "captured"
    if entry.kind == TxnKind.ROLLBACK and found.hold_fates.get(entry.reverses) == "held":
        found.hold_fates[entry.reverses] = "voided"


def _check_checkpoints(txn, dbs: dict, carried: state.Carried, violations: list[str]) -> None:
    """The checkpoints and counter sums the ledger carries equal the archived entries summed."""
    checkpoints = state.read_checkpoints(txn, dbs["meta"])
    for account_id in sorted(carried.accounts() | set(checkpoints)):
        expected = carried.onto(account_id, None)
        found = checkpoints.get(account_id, state.Checkpoint())
        for field in ("points", "debt", "last_txn_id", "entries", "lot_postings"):
            if getattr(expected, field) != getattr(found, field):
                violations.append(f"account {account_id}: checkpoint {field} expected {getattr(expected, field)} "
                                  f"(the archived entries summed), found {getattr(found, field)}")
    get = lambda name, key: txn.get(key, db=dbs[name])  # noqa: E731
    # The sums of counters compaction removed leave `archive/counters` at the next archive run.
    expected_counters = counters_kept(get, carried.counters_onto({}))
    found_counters = counters_kept(get, sorted(state.read_counters(get).items()))
    if expected_counters != found_counters:
        violations.append(f"archive counters: carried {found_counters}, the archived entries sum to {expected_counters}")


def hold_fates_start(found: Found | None) -> dict[int, str]:
    return dict(found.hold_fates) if found is not None else {}


def lot_postings_carried(checkpoints: dict[str, state.Checkpoint]) -> dict[int, int]:
    """Each lot's archived postings summed, from every account's checkpoint."""
    totals: dict[int, int] = defaultdict(int)
    for checkpoint in checkpoints.values():
        for lot_id, delta in checkpoint.lot_postings:
            totals[lot_id] += delta
    return totals
