"""The archive's files: segments of journal entries and their manifests, readable without kassa.

A segment `journal-<first txn id, 20 digits>.jsonl.gz` is one gzip file made of independently
compressed blocks (gzip members, concatenated: `zcat`, pandas, duckdb and Spark read it as one
file). Uncompressed it is JSON Lines: one journal entry a line, in transaction id order, an object
with the field names of `records.TxnRec` (a field left out holds its default: 0, "", [] or null),
plus `schema` (SCHEMA_VERSION) and `kind_name`. Bytes (counter keys) are base64 strings.

Beside it, `journal-<first txn id>.manifest.json` says what the segment holds (first and last
transaction ids and times, entries), its size and sha256, and one row per block (first txn id, byte
offset, compressed length, entries): a reader finds one entry by decompressing one block.

Files are written to a temporary name, fsynced, then renamed and the directory fsynced: a segment
or manifest under its final name is complete.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import msgspec
import msgspec.inspect

from kassa.core_ext import records as rec
from kassa.core_ext.model import TxnKind

FORMAT_NAME = "kassa-journal-archive"
SCHEMA_VERSION = 1  # of the entries' JSON (the `schema` field) and of the manifest
BLOCK_ENTRIES_MAX = 1000  # entries per gzip member: what one random read decompresses
GZIP_LEVEL = 6  # zlib's default: within a few % of level 9's size at a third of its time
SEGMENT_PREFIX = "journal-"
SEGMENT_SUFFIX = ".jsonl.gz"
MANIFEST_SUFFIX = ".manifest.json"
HASH_CHUNK_BYTES = 1024**2  # read size when hashing a segment

_TXN_INFO = msgspec.inspect.type_info(rec.TxnRec)
_KIND_NAMES = {kind.value: kind.name.lower() for kind in TxnKind}
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


class BlockRef(msgspec.Struct, array_like=True, frozen=True):
    first_txn_id: int
    offset_bytes: int
    length_bytes: int
    entries: int


class Manifest(msgspec.Struct, frozen=True):
    """What `<segment>.manifest.json` holds (JSON object, these field names)."""

    format: str
    schema: int
    segment: str  # the segment's file name, in the same directory
    first_txn_id: int
    last_txn_id: int
    first_created_at_ms: int
    last_created_at_ms: int
    entries: int
    bytes: int
    sha256: str  # hex, of the whole segment file
    blocks: list[BlockRef]  # [first_txn_id, offset_bytes, length_bytes, entries] per block
    compression: str = "gzip, one member per block"
    encoding: str = "JSON Lines, UTF-8, one journal entry per line"


def segment_name(first_txn_id: int) -> str:
    return f"{SEGMENT_PREFIX}{first_txn_id:020d}{SEGMENT_SUFFIX}"


def manifest_name(segment: str) -> str:
    return segment[: -len(SEGMENT_SUFFIX)] + MANIFEST_SUFFIX


# -- entries as JSON ------------------------------------------------------------------------------

def _defaults(info) -> dict[str, object]:
    """Each optional field's default value, for leaving it out of a line."""
    found = {}
    for field in info.fields:
        if field.default is not msgspec.NODEFAULT:
            found[field.name] = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            found[field.name] = field.default_factory()
    return found


_TXN_DEFAULTS = _defaults(_TXN_INFO)


def _named(value):
    """A record as plain JSON values, its structs (array-like in LMDB) as objects with field names."""
    if isinstance(value, msgspec.Struct):
        return {name: _named(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, (list, tuple)):
        return [_named(item) for item in value]
    return value


def entry_line(entry: rec.TxnRec) -> bytes:
    """One JSON line for `entry`: schema, kind_name, then its fields that differ from their default."""
    line = {"schema": SCHEMA_VERSION, "kind_name": _KIND_NAMES.get(entry.kind, str(entry.kind))}
    for name in entry.__struct_fields__:
        value = getattr(entry, name)
        if name in _TXN_DEFAULTS and value == _TXN_DEFAULTS[name]:
            continue
        line[name] = _named(value)
    return _json_encode(line) + b"\n"


def _arrayed(value, info):
    """The inverse of `_named` for a value of type `info`: structs back to the arrays msgspec
    decodes array-like structs from."""
    if isinstance(info, msgspec.inspect.StructType):
        defaults = _defaults(info)
        return [_arrayed(value[field.name], field.type) if field.name in value else defaults[field.name]
                for field in info.fields]
    if isinstance(info, msgspec.inspect.ListType):
        return [_arrayed(item, info.item_type) for item in value]
    if isinstance(info, msgspec.inspect.UnionType) and value is not None:
        for member in info.types:
            if isinstance(member, msgspec.inspect.StructType):
                return _arrayed(value, member)
    return value


def entry_of_line(line: bytes) -> rec.TxnRec:
    """The journal entry a segment line holds (an unknown newer schema is refused)."""
    named = _json_decode(line)
    if named.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"archive line of schema {named.get('schema')!r}; this kassa reads {SCHEMA_VERSION}")
    return msgspec.convert(_arrayed(named, _TXN_INFO), rec.TxnRec)


# -- files ----------------------------------------------------------------------------------------

def _write_durably(path: Path, chunks) -> None:
    """Write `chunks` to `path` through a temporary name: fsync the file, rename, fsync the directory."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        for chunk in chunks:
            file.write(chunk)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_segment(directory: Path, entries: list[rec.TxnRec]) -> Manifest:
    """Write `entries` (in txn id order, at least one) as a segment and its manifest, durably."""
    directory.mkdir(parents=True, exist_ok=True)
    name = segment_name(entries[0].txn_id)
    blocks: list[BlockRef] = []
    members: list[bytes] = []
    offset = 0
    digest = hashlib.sha256()
    for first in range(0, len(entries), BLOCK_ENTRIES_MAX):
        chunk = entries[first:first + BLOCK_ENTRIES_MAX]
        member = gzip.compress(b"".join(entry_line(entry) for entry in chunk), GZIP_LEVEL, mtime=0)
        blocks.append(BlockRef(chunk[0].txn_id, offset, len(member), len(chunk)))
        members.append(member)
        digest.update(member)
        offset += len(member)
    _write_durably(directory / name, members)
    manifest = Manifest(FORMAT_NAME, SCHEMA_VERSION, name, entries[0].txn_id, entries[-1].txn_id,
                        entries[0].created_at_ms, entries[-1].created_at_ms, len(entries), offset,
                        digest.hexdigest(), blocks)
    _write_durably(directory / manifest_name(name), [msgspec.json.format(msgspec.json.encode(manifest)) + b"\n"])
    return manifest


def read_manifest(directory: Path, segment: str) -> Manifest:
    return msgspec.json.decode((directory / manifest_name(segment)).read_bytes(), type=Manifest)


def segment_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_block_lines(path: Path, block: BlockRef) -> list[bytes]:
    """The JSON lines of one block: one read and one decompression."""
    with open(path, "rb") as file:
        file.seek(block.offset_bytes)
        member = file.read(block.length_bytes)
    return gzip.decompress(member).splitlines()


def segment_lines(path: Path):
    """Every JSON line of a segment, in order, block after block (the whole file, streamed)."""
    with gzip.open(path, "rb") as file:
        for line in file:
            yield line.rstrip(b"\n")
