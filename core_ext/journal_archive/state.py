"""What the ledger keeps about its archive, in its own `meta` database.

- `archive/segment/<first txn id, 8 bytes big-endian>`: one key per segment that is this ledger's
  (`SegmentRef`: name, ids, times, entries, size, sha256), so that finding the segment of a txn id
  is one cursor step however many segments there are.
- `archive/below`: the boundary (8 bytes big-endian): every journal entry with a smaller txn id
  is in a listed segment, every one from it on in the journal: the archive is a prefix of the journal.
- `archive/checkpoint/<account id>`: what the account's archived entries carried forward
  (`Checkpoint`): the points its statement shows, its debt, the postings to each lot (non-zero
  sums only), and the newest archived entry on its statement (the link across the boundary).
- `archive/counters`: each counter's archived changes summed (non-zero sums only; none for a
  counter compaction removed: `compaction.counters_kept`).

The index lives in LMDB, not in a file beside the segments, so that listing a segment, carrying its
entries forward and moving the boundary is one atomic commit, and a backup of the ledger (one LMDB
copy) names exactly the segments its journal lacks.
"""

from __future__ import annotations

from collections import defaultdict

import msgspec

from kassa.core_ext import records as rec

SEGMENT_KEY_PREFIX = b"archive/segment/"
BELOW_KEY = b"archive/below"
CHECKPOINT_PREFIX = b"archive/checkpoint/"
COUNTERS_KEY = b"archive/counters"


class SegmentRef(msgspec.Struct, array_like=True, frozen=True):
    name: str
    first_txn_id: int
    last_txn_id: int
    first_created_at_ms: int
    last_created_at_ms: int
    entries: int
    bytes: int
    sha256: str  # hex


class Checkpoint(msgspec.Struct, array_like=True, omit_defaults=True):
    points: int = 0  # sum of records.statement_change over the archived entries of its statement
    debt: int = 0  # sum of debt_delta over the archived entries of this account
    last_txn_id: int = 0  # the newest archived entry on its statement (0: none)
    entries: int = 0  # archived entries on its statement
    lot_postings: list[tuple[int, int]] = []  # (lot id, sum of its archived postings), non-zero sums


_encode = msgspec.msgpack.Encoder().encode
_decode_segment = msgspec.msgpack.Decoder(SegmentRef).decode
decode_checkpoint = msgspec.msgpack.Decoder(Checkpoint).decode
_decode_counters = msgspec.msgpack.Decoder(list[tuple[bytes, int]]).decode


def segment_key(first_txn_id: int) -> bytes:
    return SEGMENT_KEY_PREFIX + first_txn_id.to_bytes(8, "big")


def encode_segment(ref: SegmentRef) -> bytes:
    return _encode(ref)


def read_index(txn, dbs: dict) -> list[SegmentRef]:
    """Every listed segment, oldest first."""
    cursor = txn.cursor(db=dbs["meta"])
    found = []
    if not cursor.set_range(SEGMENT_KEY_PREFIX):
        return found
    for key, value in cursor:
        if not key.startswith(SEGMENT_KEY_PREFIX):
            break
        found.append(_decode_segment(value))
    return found


def segment_of(txn, dbs: dict, txn_id: int) -> SegmentRef | None:
    """The listed segment holding `txn_id`: the one with the greatest first txn id not above it."""
    cursor = txn.cursor(db=dbs["meta"])
    # To the first key after every segment that starts at or before txn_id, then one back.
    found = cursor.prev() if cursor.set_range(segment_key(txn_id + 1)) else cursor.last()
    if not found or not cursor.key().startswith(SEGMENT_KEY_PREFIX):
        return None
    ref = _decode_segment(cursor.value())
    return ref if ref.first_txn_id <= txn_id <= ref.last_txn_id else None


def read_below(get) -> int:
    """Every txn id below this is archived (0: nothing is); `get(db_name, key)` reads in any transaction."""
    stored = get("meta", BELOW_KEY)
    return int.from_bytes(stored, "big") if stored else 0


def encode_below(below_txn_id: int) -> bytes:
    return below_txn_id.to_bytes(8, "big")


def archived_below(index: list[SegmentRef]) -> int:
    """The boundary a list of segments makes (0: none)."""
    return index[-1].last_txn_id + 1 if index else 0


def read_counters(get) -> dict[bytes, int]:
    stored = get("meta", COUNTERS_KEY)
    return dict(_decode_counters(stored)) if stored else {}


def checkpoint_key(account_id: str) -> bytes:
    return CHECKPOINT_PREFIX + account_id.encode()


def read_checkpoints(txn, meta_db) -> dict[str, Checkpoint]:
    """Every account's checkpoint (a cursor over the `archive/checkpoint/` keys)."""
    found = {}
    cursor = txn.cursor(db=meta_db)
    if not cursor.set_range(CHECKPOINT_PREFIX):
        return found
    for key, value in cursor:
        if not key.startswith(CHECKPOINT_PREFIX):
            break
        found[key[len(CHECKPOINT_PREFIX):].decode()] = decode_checkpoint(value)
    return found


class Carried:
    """Sums of journal entries, per account and per counter, as a checkpoint keeps them: built
    by the archiver over a new segment, and by the verifier over the whole archive."""

    def __init__(self):
        self.points: dict[str, int] = defaultdict(int)
        self.debt: dict[str, int] = defaultdict(int)
        self.last_txn_id: dict[str, int] = {}
        self.entries: dict[str, int] = defaultdict(int)
        self.lot_postings: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.counters: dict[bytes, int] = defaultdict(int)

    def add(self, entry: rec.TxnRec) -> None:
        self.add_all((entry,))

    def add_all(self, entries) -> None:
        """Add each of `entries` (the archiver's and the verifier's inner loop: names bound once)."""
        points, last_txn_id, counts, debt = self.points, self.last_txn_id, self.entries, self.debt
        lot_postings, counters, change = self.lot_postings, self.counters, rec.statement_change
        for entry in entries:
            account_id, member_id = entry.account_id, entry.member_id
            if account_id:
                points[account_id] += change(entry, account_id)
                last_txn_id[account_id] = entry.txn_id
                counts[account_id] += 1
            if member_id:
                points[member_id] += change(entry, member_id)
                last_txn_id[member_id] = entry.txn_id
                counts[member_id] += 1
            debt[account_id] += entry.debt_delta
            lots = lot_postings[account_id]
            for posting in entry.postings:
                lots[posting.lot_id] += posting.delta
            for key, delta in entry.counters:
                counters[key] += delta

    def accounts(self) -> set[str]:
        return set(self.points) | set(self.debt) | set(self.lot_postings)

    def onto(self, account_id: str, before: Checkpoint | None) -> Checkpoint:
        """`before` (None: nothing archived yet) with this account's sums added."""
        before = before or Checkpoint()
        lots = dict(before.lot_postings)
        for lot_id, delta in self.lot_postings.get(account_id, {}).items():
            lots[lot_id] = lots.get(lot_id, 0) + delta
        return Checkpoint(
            before.points + self.points.get(account_id, 0), before.debt + self.debt.get(account_id, 0),
            self.last_txn_id.get(account_id, before.last_txn_id), before.entries + self.entries.get(account_id, 0),
            sorted((lot_id, total) for lot_id, total in lots.items() if total))

    def counters_onto(self, before: dict[bytes, int]) -> list[tuple[bytes, int]]:
        totals = defaultdict(int, before)
        for key, delta in self.counters.items():
            totals[key] += delta
        return sorted((key, total) for key, total in totals.items() if total)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    return _encode(checkpoint)


def encode_counters(counters: list[tuple[bytes, int]]) -> bytes:
    return _encode(counters)
