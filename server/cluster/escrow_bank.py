"""Partitions in a cluster: the escrow bank of shared counters, in a JetStream key-value bucket.

A partition spends a shared counter (a budget `B:`, a code's total uses `C:`) up to its slice: its
even share of the cap and the units its log took from the bank less those it gave back
(server/cluster/placed.py `SplitEscrow`). The bank holds one entry per shared counter
(ESCROW_BUCKET), changed only by compare-and-set on its revision, never inside a group's apply:
applying stays a function of the log alone.

Units move in two steps, in an order that can lose units but never create them: a releaser logs
`SliceReleased` and, once it was applied, adds the units to the bank; a taker takes units from the
bank, then logs `SliceGranted`. A node that stops between the two steps loses those units (a budget
then ends that much under its cap); the partitions together never spend past it.

Each node runs one `Balancer` for the partitions it owns, every BALANCE_INTERVAL_S: a partition whose
evaluation found nothing left of a counter (`SplitEscrow.short`) marks it wanted in the bank's entry
and takes what the bank holds (its part when several want it); a partition holding slack of a wanted
counter that it has not spent for RELEASE_IDLE_S releases all of it to the bank. An entry with
nothing in the bank and no partition wanting it is deleted, so the bucket holds only what is moving.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats.js.errors

from kassa.core_ext.model import Code
from kassa.server.cluster.group_record import SliceGranted, SliceReleased
from kassa.server.cluster.placed import read_counter
from kassa.server.cluster.streams import ESCROW_BUCKET, TRANSIENT_ERRORS
from kassa.server.logs import event

log = logging.getLogger("kassa.escrow")

BALANCE_INTERVAL_S = 1.0  # how often a node's balancer looks at its partitions' slices and the bank
RELEASE_IDLE_S = 1.0  # a partition's slack of a wanted counter goes to the bank once unspent this long
BANK_CAS_TRIES_MAX = 8  # compare-and-set attempts on one bank entry before the round gives up
BANK_ENTRIES_PER_ROUND_MAX = 256  # bank entries a round reads (the rest in the next rounds)
BANK_ENTRY_PREFIX = "k."  # the entry's key: this, then the counter's key in hex (bucket keys are subject tokens)


class BankEntry(msgspec.Struct, array_like=True, frozen=True):
    units: int = 0  # in the bank, granted to no partition
    cap: int = 0  # the counter's cap as the last partition that wanted it saw it
    wanted_by: tuple[int, ...] = ()  # partitions that found nothing left of it


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(BankEntry).decode


def entry_name(key: bytes) -> str:
    return BANK_ENTRY_PREFIX + key.hex()


async def read_entry(kv, key: bytes) -> tuple[BankEntry, int | None]:
    """The counter's entry and its revision (None: no entry yet, an empty bank)."""
    try:
        found = await kv.get(entry_name(key))
    except nats.js.errors.KeyNotFoundError:
        return BankEntry(), None
    return _decode(found.value), found.revision


async def change_entry(kv, key: bytes, change) -> tuple[BankEntry, BankEntry] | None:
    """(before, after) once `change(entry)` (a new entry, or None: nothing to write) was written by
    compare-and-set, read again and retried when another node wrote first; None: nothing written."""
    for _ in range(BANK_CAS_TRIES_MAX):
        entry, revision = await read_entry(kv, key)
        changed = change(entry)
        if changed is None:
            return None
        try:
            if revision is None:
                await kv.create(entry_name(key), _encode(changed))
            elif changed.units == 0 and not changed.wanted_by:  # nothing in motion: the bucket keeps no entry
                await kv.delete(entry_name(key), last=revision)
            else:
                await kv.update(entry_name(key), _encode(changed), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
        return entry, changed
    return None


def take_share(entry: BankEntry, partition: int, cap: int) -> BankEntry | None:
    """The entry after `partition` took its part of the bank (all of it, or an equal part when
    others want it too) or, with the bank empty, marked the counter wanted; None: already marked."""
    others = tuple(wanting for wanting in entry.wanted_by if wanting != partition)
    if entry.units > 0:
        taken = -(-entry.units // (len(others) + 1))  # ceiling: the last unit goes too
        return BankEntry(entry.units - taken, cap, others)
    if partition in entry.wanted_by:
        return None
    return BankEntry(0, cap, (*entry.wanted_by, partition))


class Balancer:
    """Moves slices' units through the bank for the partitions this node owns."""

    def __init__(self, node, committers):
        self._node = node
        self._committers = committers  # per partition: submit([...]) through its log
        self._kv = None
        self._next_entry = 0  # where the next round's look at the bank's entries starts

    async def run_periodically(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.run_once()
            except (*TRANSIENT_ERRORS, nats.js.errors.Error) as error:
                log.warning("escrow balancing failed; the next round retries: %s: %s", type(error).__name__, error)
            except Exception:  # a balancer that died would strand every slack from then on
                log.exception("escrow balancing failed; the next round retries")

    async def run_once(self) -> int:
        """One round over the owned partitions; returns the units moved (taken and released)."""
        if self._kv is None:
            self._kv = await self._node.js.key_value(ESCROW_BUCKET)
        moved = 0
        for partition in self._node.owned():
            escrow = self._node.ledger.parts[partition].escrow
            for key, cap in list(escrow.short.items()):
                moved += await self._take(partition, escrow, key, cap)
        wanted = await self._wanted_entries()
        for partition in self._node.owned():
            for key, entry in wanted:
                if any(wanting != partition for wanting in entry.wanted_by):
                    moved += await self._release(partition, key, entry.cap)
        return moved

    async def _take(self, partition: int, escrow, key: bytes, cap: int) -> int:
        changed = await change_entry(self._kv, key, lambda entry: take_share(entry, partition, cap))
        if changed is None or changed[0].units == changed[1].units:
            return 0  # marked wanted (or already): the next rounds take what releasers give
        taken = changed[0].units - changed[1].units
        escrow.short.pop(key, None)  # the next evaluation that finds nothing left marks it again
        (outcome,) = await self._committers[partition].submit([SliceGranted(key, taken)])
        if outcome.code != Code.OK:  # not granted, or not acknowledged (then maybe granted): never twice
            log.error("escrow units may be lost: %d of %r taken from the bank, not granted to partition %d: %s",
                      taken, key, partition, outcome.message)
            return 0
        event(log, "escrow units granted", partition=partition, counter=key.decode(errors="replace"), units=taken)
        return taken

    async def _release(self, partition: int, key: bytes, cap: int) -> int:
        ledger = self._node.ledger.parts[partition]
        if time.monotonic() - ledger.escrow.spent_at_s.get(key, 0.0) < RELEASE_IDLE_S:
            return 0  # spending it now: it needs its slack
        slack = ledger.escrow.slice_of(key, cap) - await asyncio.to_thread(read_counter, ledger, key)
        if slack <= 0:
            return 0
        (outcome,) = await self._committers[partition].submit([SliceReleased(key, slack, cap)])
        if outcome.code != Code.OK:  # a spend came first (the slice keeps its units), or not acknowledged
            return 0  # (then maybe applied: those units are lost, never added twice)
        added = await change_entry(self._kv, key, lambda entry: BankEntry(entry.units + slack, entry.cap or cap,
                                                                            entry.wanted_by))
        if added is None:
            log.error("escrow units lost: %d of %r released by partition %d, not added to the bank",
                      slack, key, partition)
            return 0
        event(log, "escrow units released", partition=partition, counter=key.decode(errors="replace"), units=slack)
        return slack

    async def _wanted_entries(self) -> list[tuple[bytes, BankEntry]]:
        """Up to BANK_ENTRIES_PER_ROUND_MAX entries that some partition wants, the next ones each round."""
        try:
            names = sorted(await self._kv.keys())
        except nats.js.errors.NoKeysError:
            return []
        start = self._next_entry % len(names)
        names = (names[start:] + names[:start])[:BANK_ENTRIES_PER_ROUND_MAX]
        self._next_entry = start + len(names)
        entries = []
        for name in names:
            if name.startswith(BANK_ENTRY_PREFIX):
                key = bytes.fromhex(name[len(BANK_ENTRY_PREFIX):])
                entry, _ = await read_entry(self._kv, key)
                if entry.wanted_by:
                    entries.append((key, entry))
        return entries
