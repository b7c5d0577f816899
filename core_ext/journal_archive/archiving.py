"""Moving closed periods of the journal out of LMDB into archive segments.

What moves: the longest prefix of the journal (by txn id, which grows with time) whose entries were
created before the cutoff, `min(before_ms, keep_after_ms)`, and are not a hold still capturable at
`now_ms`. The caller's `keep_after_ms` keeps what later operations read often: a replay rebuilt
from its entry (server: the replay window); a return or rollback of an archived original reads it
from the archive. A prefix keeps one boundary txn id: below it the archive, from it the journal.
With `after_compaction`, the prefix also stops where compaction no longer reads the journal
(core_ext/compaction.py, `journal_done_below_txn_id`): an entry moves only once compaction has
dropped its answer and indexed its idempotency record in `aging`, or the record would stay behind
with nothing to lead compaction to it.

The order makes a crash at any point safe (an entry is always in the journal, or in a listed and
checksummed segment, or both), and a rerun finish the job:
1. read the entries (a read transaction; journal entries are never rewritten, so they cannot
   change under it);
2. write the segment and its manifest, fsynced (an unlisted segment is nobody's: a rerun rewrites it);
3. one write transaction lists the segment, adds its sums to the checkpoints and moves the boundary;
4. delete the archived entries from the journal, DELETE_ENTRIES_PER_TXN a write transaction, so
   that the server's commits wait at most that long for the writer lock. Until then an entry below
   the boundary that is still in the journal is ignored by the checks and read from either place.
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path

import lmdb
import msgspec

from kassa.core_ext import records as rec
from kassa.core_ext.compaction import counters_kept, journal_done_below_txn_id
from kassa.core_ext.journal_archive import segments, state
from kassa.core_ext.model import TxnKind

ARCHIVE_DIR_NAME = "archive"  # under the ledger's path
SEGMENT_ENTRIES_MAX = 100_000  # journal entries per segment: bounds the write transaction of step 3
DELETE_ENTRIES_PER_TXN = 2_000  # journal entries deleted per write transaction (step 4)
HOLD_KIND = int(TxnKind.HOLD)  # a plain int compares faster than the enum, once an entry
TXN_ID_NONE_ABOVE = 2**64  # txn ids are 8-byte keys: every one is below this


class ArchiveConflict(Exception):
    """Another archiver moved the boundary meanwhile: this run stops, nothing half-done."""


class ArchiveResult(msgspec.Struct):
    segments: list[str]
    entries: int
    bytes: int
    archived_below_txn_id: int
    deleted: int  # journal entries deleted (this run's and an interrupted run's)
    more: bool = False  # it stopped at `segments_max` full segments: closed entries may remain


def archive_dir_of(ledger_path: str | Path) -> Path:
    return Path(ledger_path) / ARCHIVE_DIR_NAME


def archive_journal(env, dbs: dict, archive_dir: Path, before_ms: int, keep_after_ms: int | None = None,
                    now_ms: int | None = None, segment_entries_max: int = SEGMENT_ENTRIES_MAX,
                    on_step=None, after_compaction: bool = False, segments_max: int | None = None) -> ArchiveResult:
    """Archive the journal's entries created before `before_ms` (and before `keep_after_ms`, when
    given), in segments of at most `segment_entries_max` entries, at most `segments_max` segments
    (None: until none is closed). `on_step(name)`, if given, is called after each step
    ("written", "listed", "deleting"): the crash tests stop there."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    cutoff_ms = before_ms if keep_after_ms is None else min(before_ms, keep_after_ms)
    step = on_step or (lambda name: None)
    deleted = _delete_archived(env, dbs, step)  # what an interrupted run left
    written: list[segments.Manifest] = []
    while segments_max is None or len(written) < segments_max:
        made = _write_next_segment(env, dbs, archive_dir, cutoff_ms, now_ms, segment_entries_max, after_compaction)
        if made is None:
            break
        below, manifest, carried = made
        step("written")
        _list_segment(env, dbs, below, manifest, carried)
        step("listed")
        written.append(manifest)
        deleted += _delete_archived(env, dbs, step)
    with env.begin() as txn:
        below = state.read_below(_getter(txn, dbs))
    more = bool(written) and len(written) == segments_max and written[-1].entries == segment_entries_max
    return ArchiveResult([manifest.segment for manifest in written], sum(m.entries for m in written),
                         sum(m.bytes for m in written), below, deleted, more)


def _getter(txn, dbs: dict):
    return lambda name, key: txn.get(key, db=dbs[name])


def _write_next_segment(env, dbs: dict, archive_dir: Path, cutoff_ms: int, now_ms: int, entries_max: int,
                        after_compaction: bool):
    """Steps 1 and 2 for the next segment, streamed a block at a time (no more than a block of
    entries is decoded at once: holding a segment's 100,000 entries cost more in the garbage
    collector than in the encoding). (boundary, manifest, sums), or None when nothing is closed."""
    writer = segments.SegmentWriter(archive_dir)
    carried = state.Carried()
    with env.begin() as txn:
        below = state.read_below(_getter(txn, dbs))
        upto_txn_id = journal_done_below_txn_id(_getter(txn, dbs)) if after_compaction else None
        for block in _closed_blocks(txn, dbs, below, cutoff_ms, now_ms, entries_max, upto_txn_id):
            carried.add_all(block)
            writer.add_block(block)
    if not writer.entries:
        return None
    return below, writer.finish(), carried


def _closed_blocks(txn, dbs: dict, from_txn_id: int, cutoff_ms: int, now_ms: int, entries_max: int,
                   upto_txn_id: int | None = None):
    """The journal's entries from `from_txn_id` on (below `upto_txn_id`, if given), up to the first
    that must stay and at most `entries_max`, in lists of at most segments.BLOCK_ENTRIES_MAX; one
    cursor walks the journal in key order, and a block is decoded by records.decode_txns (one call per run of one layout)."""
    upto_txn_id = TXN_ID_NONE_ABOVE if upto_txn_id is None else upto_txn_id
    cursor = txn.cursor(db=dbs["journal"])
    if not cursor.set_range(from_txn_id.to_bytes(8, "big")):
        return
    values = cursor.iternext(keys=False, values=True)
    taken = 0
    while taken < entries_max:
        block = rec.decode_txns(list(islice(values, min(segments.BLOCK_ENTRIES_MAX, entries_max - taken))))
        for index, entry in enumerate(block):
            if (entry.created_at_ms >= cutoff_ms or entry.txn_id >= upto_txn_id
                    or (entry.kind == HOLD_KIND and _capturable_hold(txn, dbs, entry, now_ms))):
                if index:
                    yield block[:index]
                return
        if not block:
            return
        taken += len(block)
        yield block


def _capturable_hold(txn, dbs: dict, entry, now_ms: int) -> bool:
    """A hold (`entry`'s kind) a later Accrue may still capture: its entry is read then (the store check)."""
    stored = txn.get(entry.txn_id.to_bytes(8, "big"), db=dbs["holds"])
    if stored is None:
        return False
    hold = rec.decode_hold(stored)
    return hold.state == rec.HoldState.LIVE and hold.expires_at_ms > now_ms


def _list_segment(env, dbs: dict, below: int, manifest: segments.Manifest, carried: state.Carried) -> None:
    """Step 3: list the segment, carry its sums into the checkpoints, move the boundary; one commit."""
    ref = state.SegmentRef(manifest.segment, manifest.first_txn_id, manifest.last_txn_id,
                           manifest.first_created_at_ms, manifest.last_created_at_ms, manifest.entries,
                           manifest.bytes, manifest.sha256)
    meta = dbs["meta"]

    def commit():
        with env.begin(write=True) as txn:
            get = _getter(txn, dbs)
            if state.read_below(get) != below:
                raise ArchiveConflict("another archive run moved the boundary meanwhile; run it again")
            _carry_into_checkpoints(txn, meta, carried)
            counters = counters_kept(get, carried.counters_onto(state.read_counters(get)))
            txn.put(state.COUNTERS_KEY, state.encode_counters(counters), db=meta)
            txn.put(state.segment_key(ref.first_txn_id), state.encode_segment(ref), db=meta)
            txn.put(state.BELOW_KEY, state.encode_below(ref.last_txn_id + 1), db=meta)

    _with_growth(env, commit)
    env.sync(True)


def _carry_into_checkpoints(txn, meta, carried: state.Carried) -> None:
    """Each account's checkpoint plus its sums in this segment; in key order (B-tree pages that a
    put left in the cache serve the next account's get)."""
    get, put, decode, encode, onto = txn.get, txn.put, state.decode_checkpoint, state.encode_checkpoint, carried.onto
    for account_id in sorted(carried.accounts()):
        key = state.checkpoint_key(account_id)
        stored = get(key, db=meta)
        put(key, encode(onto(account_id, decode(stored) if stored else None)), db=meta)


def _delete_archived(env, dbs: dict, step) -> int:
    """Step 4: delete the journal's entries below the boundary, a bounded batch per write transaction."""
    deleted = 0
    while True:
        def delete_some() -> int:
            with env.begin(write=True) as txn:
                below_key = state.encode_below(state.read_below(_getter(txn, dbs)))
                cursor = txn.cursor(db=dbs["journal"])
                count = 0
                # Keys are 8-byte big-endian txn ids: their byte order is their numeric order.
                # A delete leaves the cursor on the next entry.
                positioned = cursor.first()
                while positioned and count < DELETE_ENTRIES_PER_TXN and cursor.key() < below_key:
                    positioned = cursor.delete()
                    count += 1
                return count

        count = _with_growth(env, delete_some)
        if not count:
            return deleted
        deleted += count  # not synced: a deletion lost in a crash is done again by the next run
        step("deleting")


def _with_growth(env, write):
    """Run `write` (one write transaction); when the map is full, grow it once and run it again."""
    try:
        return write()
    except lmdb.MapFullError:
        grow = getattr(env, "grow", None)
        if grow is None or grow() is not None:
            raise
        return write()
