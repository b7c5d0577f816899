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
from typing import Union

import msgspec
import msgspec.inspect
from isal import isal_zlib

from kassa.core_ext import records as rec
from kassa.core_ext.model import TxnKind

FORMAT_NAME = "kassa-journal-archive"
SCHEMA_VERSION = 1  # of the entries' JSON (the `schema` field) and of the manifest
# Entries per gzip member: what one random read decompresses (~0.3 MB of JSON). Bench purchases:
# 121.4 compressed bytes an entry at 250, 119.4 at 1,000 (4x the work per random read), 118.9 at 4,000
# (zlib level 6).
BLOCK_ENTRIES_MAX = 250
# ISA-L's deflate (standard gzip members, any reader inflates them), level 1 of its 0-3. Bench
# purchases, us a entry to compress / bytes a entry: zlib 6: 26 / 121.4; zlib 1: 8.4 / 162.7;
# ISA-L 1: 2.0 / 153.7; ISA-L 3: 4.2 / 148.2. The archive must keep up with 10,000 purchases a second.
GZIP_LEVEL = 1
GZIP_WBITS = 31  # zlib's window bits for a gzip header and trailer (16 + a 32 KiB window)
SEGMENT_PREFIX = "journal-"
SEGMENT_SUFFIX = ".jsonl.gz"
MANIFEST_SUFFIX = ".manifest.json"
HASH_CHUNK_BYTES = 1024**2  # read size when hashing a segment



class BlockRef(msgspec.Struct, frozen=True):
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
    blocks: list[BlockRef]  # per block: first_txn_id, offset_bytes, length_bytes, entries
    compression: str = "gzip, one member per block"
    encoding: str = "JSON Lines, UTF-8, one journal entry per line"


def segment_name(first_txn_id: int) -> str:
    return f"{SEGMENT_PREFIX}{first_txn_id:020d}{SEGMENT_SUFFIX}"


def manifest_name(segment: str) -> str:
    return segment[: -len(SEGMENT_SUFFIX)] + MANIFEST_SUFFIX


# -- entries as JSON ------------------------------------------------------------------------------
# The journal's records are array-like msgpack structs; the archive writes them with field names.
# Each record type gets a mirror struct of the same fields that is not array-like (built once
# from the record's type information, so the two never drift): msgspec converts a record into its
# mirror and encodes the mirror as a JSON object, both in C.

def _python_type(info):
    """The annotation for a msgspec type-info node, records replaced by their mirrors."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.StructType):
        return _mirror(info.cls, omit_defaults=False)
    if isinstance(info, inspect.ListType):
        return list[_python_type(info.item_type)]
    if isinstance(info, inspect.TupleType):
        return tuple[tuple(_python_type(item) for item in info.item_types)]
    if isinstance(info, inspect.VarTupleType):
        return tuple[_python_type(info.item_type), ...]
    if isinstance(info, inspect.DictType):
        return dict[_python_type(info.key_type), _python_type(info.value_type)]
    if isinstance(info, inspect.UnionType):
        return Union[tuple(_python_type(member) for member in info.types)]  # noqa: UP007
    simple = {inspect.IntType: int, inspect.StrType: str, inspect.BoolType: bool, inspect.BytesType: bytes,
              inspect.NoneType: type(None)}
    return simple[type(info)]


def _mirror(cls, omit_defaults: bool, extra: tuple = ()):
    """A struct with `cls`'s fields (and `extra` ones last) that encodes as a JSON object."""
    fields = []
    for field in msgspec.inspect.type_info(cls).fields:
        if field.default is not msgspec.NODEFAULT:
            fields.append((field.name, _python_type(field.type), field.default))
        elif field.default_factory is not msgspec.NODEFAULT:
            fields.append((field.name, _python_type(field.type), msgspec.field(default_factory=field.default_factory)))
        else:
            fields.append((field.name, _python_type(field.type)))
    return msgspec.defstruct(f"Named{cls.__name__}", fields + list(extra), omit_defaults=omit_defaults)


# Written: the entry's fields, those equal to their default left out. Read: the same, and the
# line's schema (kind_name is for people; the kind number is what is read back).
_NamedTxn = _mirror(rec.TxnRec, omit_defaults=True, extra=(("schema", int, 0), ("kind_name", str, "")))
_LINE_STARTS = {kind.value: b'{"schema":%d,"kind_name":"%s",' % (SCHEMA_VERSION, kind.name.lower().encode())
                for kind in TxnKind}
_encode_named = msgspec.json.Encoder().encode
_decode_named = msgspec.json.Decoder(_NamedTxn).decode
# A block is written without building mirrors: each entry (and each record nested in it) is
# given the class of an object-form subclass of its own type (same fields, same memory layout:
# CPython refuses an assignment between incompatible layouts) and encoded by msgspec in C.
# Converting into mirrors cost more than decoding, encoding and compressing together
# (bench.archive_bytes: 9 of 20 us an entry). The subclasses are built from the records' type
# information; a layout this does not know (records nested two deep, or in a dict or tuple) falls
# back to `entry_line`.


def entry_line(entry: rec.TxnRec) -> bytes:
    """One JSON line for `entry`: schema, kind_name, then its fields that differ from their default."""
    body = _encode_named(msgspec.convert(entry, _NamedTxn, from_attributes=True))
    start = _LINE_STARTS.get(entry.kind) or b'{"schema":%d,"kind_name":"%d",' % (SCHEMA_VERSION, entry.kind)
    return start + body[1:] + b"\n"


def _object_form(cls, omit_defaults: bool):
    return msgspec.defstruct(f"Named{cls.__name__}", [], bases=(cls,), array_like=False, omit_defaults=omit_defaults)


def _nested_object_forms(cls) -> list[tuple[str, bool, type]] | None:
    """Per field of `cls` holding records: (name, whether a list of them, object-form class);
    None when a field holds records in a way `block_lines` does not handle."""
    inspect = msgspec.inspect
    nested = []
    for field in inspect.type_info(cls).fields:
        info = field.type
        if isinstance(info, inspect.UnionType):
            members = [member for member in info.types if not isinstance(member, inspect.NoneType)]
            info = members[0] if len(members) == 1 else info
        many = isinstance(info, (inspect.ListType, inspect.VarTupleType))
        record = info.item_type if many else info
        if isinstance(record, inspect.StructType) and not any(map(_holds_struct, _field_types(record.cls))):
            nested.append((field.name, many, _object_form(record.cls, omit_defaults=False)))
        elif _holds_struct(info):
            return None
    return nested


def _field_types(cls) -> list:
    return [field.type for field in msgspec.inspect.type_info(cls).fields]


def _holds_struct(info) -> bool:
    inspect = msgspec.inspect
    if isinstance(info, inspect.StructType):
        return True
    children = getattr(info, "types", None) or getattr(info, "item_types", None) or ()
    singles = [getattr(info, name) for name in ("item_type", "key_type", "value_type") if hasattr(info, name)]
    return any(_holds_struct(child) for child in (*children, *singles))


_TxnObject = _object_form(rec.TxnRec, omit_defaults=True)
_TXN_NESTED = _nested_object_forms(rec.TxnRec)
_encode_object_into = msgspec.json.Encoder().encode_into
COMMA_BYTE = ord(",")


def block_lines(entries: list[rec.TxnRec]) -> bytes:
    """The JSON lines of `entries`, each exactly as `entry_line` writes it. The entries are spent:
    they keep their object-form classes (same fields and values; they no longer compare equal to
    records of their own type)."""
    if _TXN_NESTED is None:
        return b"".join(entry_line(entry) for entry in entries)
    lines = bytearray()
    for entry in entries:
        lines += _LINE_STARTS.get(entry.kind) or b'{"schema":%d,"kind_name":"%d",' % (SCHEMA_VERSION, entry.kind)
        entry.__class__ = _TxnObject
        for name, many, object_form in _TXN_NESTED:
            value = getattr(entry, name)
            if many:
                for item in value:
                    item.__class__ = object_form
            elif value is not None:
                value.__class__ = object_form
        # The object goes over the line start's last comma, which then comes back over its "{".
        comma_at = len(lines) - 1
        _encode_object_into(entry, lines, comma_at)
        lines[comma_at] = COMMA_BYTE
        lines += b"\n"
    return bytes(lines)


def compress_block(data: bytes) -> bytes:
    """One gzip member (header mtime 0: the same entries always make the same bytes)."""
    deflate = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS)
    return deflate.compress(data) + deflate.flush()


def entry_of_line(line: bytes) -> rec.TxnRec:
    """The journal entry a segment line holds (an unknown newer schema is refused)."""
    named = _decode_named(line)
    if named.schema != SCHEMA_VERSION:
        raise ValueError(f"archive line of schema {named.schema!r}; this kassa reads {SCHEMA_VERSION}")
    return msgspec.convert(named, rec.TxnRec, from_attributes=True)


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


class SegmentWriter:
    """A segment built block by block (the caller keeps no more than a block of entries), then
    written durably with its manifest by `finish`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.blocks: list[BlockRef] = []
        self.members: list[bytes] = []
        self.offset_bytes = 0
        self.digest = hashlib.sha256()
        self.entries = 0
        self.first: rec.TxnRec | None = None
        self.last: rec.TxnRec | None = None

    def add_block(self, entries: list[rec.TxnRec]) -> None:
        """Append one block of `entries` (in txn id order, at most BLOCK_ENTRIES_MAX, at least one;
        spent by `block_lines`)."""
        member = compress_block(block_lines(entries))
        self.blocks.append(BlockRef(entries[0].txn_id, self.offset_bytes, len(member), len(entries)))
        self.members.append(member)
        self.digest.update(member)
        self.offset_bytes += len(member)
        self.entries += len(entries)
        self.first = self.first or entries[0]
        self.last = entries[-1]

    def finish(self) -> Manifest:
        """Write the segment and its manifest, each fsynced under a temporary name then renamed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = segment_name(self.first.txn_id)
        _write_durably(self.directory / name, self.members)
        manifest = Manifest(FORMAT_NAME, SCHEMA_VERSION, name, self.first.txn_id, self.last.txn_id,
                            self.first.created_at_ms, self.last.created_at_ms, self.entries, self.offset_bytes,
                            self.digest.hexdigest(), self.blocks)
        _write_durably(self.directory / manifest_name(name),
                       [msgspec.json.format(msgspec.json.encode(manifest)) + b"\n"])
        return manifest


def write_segment(directory: Path, entries: list[rec.TxnRec]) -> Manifest:
    """Write `entries` (in txn id order, at least one) as a segment and its manifest, durably
    (copies of them are spent: the caller's entries stay as they are)."""
    writer = SegmentWriter(directory)
    for first in range(0, len(entries), BLOCK_ENTRIES_MAX):
        writer.add_block([_copy(entry) for entry in entries[first:first + BLOCK_ENTRIES_MAX]])
    return writer.finish()


def _copy(entry: rec.TxnRec) -> rec.TxnRec:
    return rec.decode_txn(msgspec.msgpack.encode(entry))


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
