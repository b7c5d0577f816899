"""Reading journal entries across the archive boundary: a statement pages on into archived periods.

`journal_entry(txn, dbs, reader, txn_id)` is the ledger's one read of a journal entry by id: the
journal first, then the archive (the segment from its key in `meta`, one cursor step; the block from
its manifest; one block decompressed, kept in a bounded cache). `statement_page` is `Ledger.statement`'s
walk along an account's chain of `prev_id` links, on top of it: every entry once, newest first.
"""

from __future__ import annotations

import bisect
import threading
import zlib
from collections import OrderedDict
from pathlib import Path

import msgspec

from kassa.core_ext import records as rec
from kassa.core_ext.journal_archive import segments, state

BLOCKS_CACHED_MAX = 64  # decompressed blocks a reader keeps (each BLOCK_ENTRIES_MAX lines, ~0.3 MB): ~18 MB
MANIFESTS_CACHED_MAX = 256  # parsed manifests a reader keeps


class ArchiveUnreadable(Exception):
    """A listed segment or its manifest is missing or does not hold the entry it should."""


class ArchiveReader:
    """Random access to archived entries by txn id; thread-safe, one per ledger."""

    def __init__(self, archive_dir: Path, blocks_cached_max: int = BLOCKS_CACHED_MAX):
        self.directory = Path(archive_dir)
        self.blocks_cached_max = blocks_cached_max
        self._lock = threading.Lock()
        self._manifests: OrderedDict[str, segments.Manifest] = OrderedDict()
        self._blocks: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()
        self.blocks_read = 0  # decompressions made: what the tests count

    def entry(self, txn, dbs: dict, txn_id: int) -> rec.TxnRec | None:
        """The archived entry `txn_id` (None: not in a segment `txn` lists)."""
        ref = state.segment_of(txn, dbs, txn_id)
        if ref is None:
            return None
        manifest = self._manifest(ref.name)
        starts = [block.first_txn_id for block in manifest.blocks]
        block = manifest.blocks[bisect.bisect_right(starts, txn_id) - 1]
        lines = self._block(ref.name, block)
        try:
            at = bisect.bisect_left(lines, txn_id, key=_txn_id_of)  # lines are in txn id order
            if at == len(lines) or _txn_id_of(lines[at]) != txn_id:
                return None  # an id the journal never used (ids of aborted groups are not reused)
            return segments.entry_of_line(lines[at])
        except (ValueError, msgspec.DecodeError) as error:  # a block that decompressed to damaged lines
            raise ArchiveUnreadable(f"archive segment {ref.name}: a damaged line in the block at byte "
                                    f"{block.offset_bytes} ({error})") from error

    def archived(self, get, txn_id: int) -> bool:
        """Whether `txn_id` is below the archive boundary (its entry, if any, is the archive's).
        `get(db_name, key)` reads in any transaction."""
        return 0 < txn_id < state.read_below(get)

    def _manifest(self, name: str) -> segments.Manifest:
        with self._lock:
            manifest = self._manifests.get(name)
            if manifest is not None:
                self._manifests.move_to_end(name)
                return manifest
        try:
            manifest = segments.read_manifest(self.directory, name)
        except OSError as error:
            raise ArchiveUnreadable(f"archive segment {name}: cannot read its manifest ({error})") from error
        with self._lock:
            self._manifests[name] = manifest
            while len(self._manifests) > MANIFESTS_CACHED_MAX:
                self._manifests.popitem(last=False)
        return manifest

    def _block(self, name: str, block: segments.BlockRef) -> list[bytes]:
        key = (name, block.first_txn_id)
        with self._lock:
            lines = self._blocks.get(key)
            if lines is not None:
                self._blocks.move_to_end(key)
                return lines
        try:
            raw = segments.read_block_lines(self.directory / name, block)
        except (OSError, EOFError, ValueError, zlib.error) as error:
            raise ArchiveUnreadable(f"archive segment {name}: cannot read the block at byte "
                                    f"{block.offset_bytes} ({error})") from error
        with self._lock:
            self.blocks_read += 1
            self._blocks[key] = lines = raw
            while len(self._blocks) > self.blocks_cached_max:
                self._blocks.popitem(last=False)
        return lines


def _txn_id_of(line: bytes) -> int:
    """The txn id of a line without decoding all of it (the writer puts it third)."""
    start = line.index(b'"txn_id":') + len(b'"txn_id":')
    end = start
    while line[end:end + 1].isdigit():
        end += 1
    return int(line[start:end])


def journal_entry(txn, dbs: dict, reader: ArchiveReader | None, txn_id: int) -> rec.TxnRec | None:
    """The journal entry `txn_id`, from the journal or else the archive; None: neither has it."""
    stored = txn.get(txn_id.to_bytes(8, "big"), db=dbs["journal"])
    if stored is not None:
        return rec.decode_txn(stored)
    return reader.entry(txn, dbs, txn_id) if reader is not None else None


def previous_of(entry: rec.TxnRec, account_id: str) -> int:
    """The account's entry before `entry` on its statement (0: none)."""
    return entry.prev_id if entry.account_id == account_id else entry.member_prev_id


def statement_page(txn, dbs: dict, reader: ArchiveReader | None, account_id: str, last_txn_id: int, page_size: int,
                   before_id: int = 0) -> tuple[list[rec.TxnRec], int] | None:
    """Up to `page_size` entries of the statement of `account_id` (whose newest entry is
    `last_txn_id`) older than `before_id` (0: from the newest), newest first, and the `before_id` of
    the next page (0: none). None: `before_id` is not an entry of this account."""
    next_id = last_txn_id
    if before_id:
        entry = journal_entry(txn, dbs, reader, before_id)
        if entry is None or account_id not in (entry.account_id, entry.member_id):
            return None
        next_id = previous_of(entry, account_id)
    entries = []
    while next_id and len(entries) <= page_size:
        entry = journal_entry(txn, dbs, reader, next_id)
        if entry is None:
            raise ArchiveUnreadable(f"account {account_id}: statement links to transaction {next_id}, "
                                    "which is in neither the journal nor the archive")
        entries.append(entry)
        next_id = previous_of(entry, account_id)
    next_before_id = entries[page_size - 1].txn_id if len(entries) > page_size else 0
    return entries[:page_size], next_before_id
