"""The journal archive: closed periods of the journal moved out of LMDB into compressed,
checksummed segment files under `<ledger path>/archive/`, with a balance checkpoint per account
kept in the ledger (DESIGN §4 Lifecycle). The format is documented in `segments`."""

from kassa.core_ext.journal_archive.archiving import (
    ARCHIVE_DIR_NAME, DELETE_ENTRIES_PER_TXN, SEGMENT_ENTRIES_MAX, ArchiveConflict, ArchiveResult, archive_dir_of,
    archive_journal,
)
from kassa.core_ext.journal_archive.reading import (
    BLOCKS_CACHED_MAX, ArchiveReader, ArchiveUnreadable, journal_entry, statement_page,
)
from kassa.core_ext.journal_archive.state import read_below, read_index

__all__ = [
    "ARCHIVE_DIR_NAME", "BLOCKS_CACHED_MAX", "DELETE_ENTRIES_PER_TXN", "SEGMENT_ENTRIES_MAX", "ArchiveConflict",
    "ArchiveReader", "ArchiveResult", "ArchiveUnreadable", "archive_dir_of", "archive_journal", "journal_entry",
    "read_below", "read_index", "statement_page",
]
