"""One lease per partition, in the JetStream key-value bucket `kassa_leases`.

A node takes a partition's lease by creating its key (compare-and-set against "no entry") and
renews it by updating the entry at the revision it last wrote (compare-and-set by revision). The
bucket's entries expire `ttl_ms` after their last write, on the NATS servers' clock: a lease that
is not renewed lapses there and another node's `take` then succeeds. The revision of the entry a
take wrote is the lease's fencing token; renewals keep it in the value.

The holder counts its lease as held until `ttl_ms - margin_ms` after it *sent* its last successful
write, by its own monotonic clock: the servers expire the entry no earlier than `ttl_ms` after they
stored it, which is later, so the holder stops serving before anyone else can take over. The log's
expected-sequence check (partition_log) still refuses a holder whose view is stale, whatever the
clocks do.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.js.errors

from kassa.server.cluster.lease_timing import LeaseTiming
from kassa.server.cluster.streams import TRANSIENT_ERRORS, lease_key

LEASE_REQUEST_S_MAX = 1.0  # one take or renew request


class LeaseRecord(msgspec.Struct, array_like=True, frozen=True):
    node_id: str
    address: str  # where the node serves gRPC: other nodes forward this partition's calls there
    token: int  # the revision of the take; 0 in the take's own entry (its revision is its token)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(LeaseRecord).decode
_TRANSIENT = TRANSIENT_ERRORS


class PartitionLease:
    def __init__(self, kv, partition: int, node_id: str, address: str, timing: LeaseTiming, monotonic=time.monotonic):
        self._kv = kv
        self.partition = partition
        self._key = lease_key(partition)
        self.node_id = node_id
        self.address = address
        self.timing = timing
        self._monotonic = monotonic
        self.token: int | None = None  # the fencing token while this node holds the lease
        self._revision = 0  # of the entry this node last wrote
        self._held_until_s = 0.0  # monotonic

    def held(self) -> bool:
        """True while this node may act as the partition's owner."""
        return self.token is not None and self._monotonic() < self._held_until_s

    def remaining_ms(self) -> int:
        return max(0, int((self._held_until_s - self._monotonic()) * 1000)) if self.token is not None else 0

    async def take(self) -> bool:
        """Take the lease if no one holds it (or it lapsed), or take back the entry this node last
        wrote (its hold ran out while the servers could not be reached, and no one took it since).
        True when this node holds it now, under a new token."""
        sent_s = self._monotonic()
        value = _encode(LeaseRecord(self.node_id, self.address, 0))
        try:
            revision = await asyncio.wait_for(self._kv.create(self._key, value), LEASE_REQUEST_S_MAX)
        except nats.js.errors.KeyWrongLastSequenceError:
            if not self._revision:
                return False  # held by someone (maybe an earlier run of this node: it lapses)
            try:  # still the entry this node wrote: no one else took the lease since
                revision = await asyncio.wait_for(self._kv.update(self._key, value, last=self._revision),
                                                  LEASE_REQUEST_S_MAX)
            except (nats.js.errors.KeyWrongLastSequenceError, *_TRANSIENT):
                return False
        except (nats.js.errors.KeyNotFoundError, *_TRANSIENT):
            # KeyNotFound: the client found an entry, then looked for a delete marker after it expired.
            return False
        self.token = revision
        self._granted(revision, sent_s)
        return True

    async def renew(self) -> bool:
        """Extend the lease. False when it is lost (someone else's entry, or it lapsed); a request
        that fails in transit leaves it as it was, held until its time runs out."""
        if self.token is None:
            return False
        sent_s = self._monotonic()
        try:
            revision = await asyncio.wait_for(
                self._kv.update(self._key, _encode(LeaseRecord(self.node_id, self.address, self.token)),
                                last=self._revision), LEASE_REQUEST_S_MAX)
        except nats.js.errors.KeyWrongLastSequenceError:
            self.token = None
            return False
        except _TRANSIENT:
            return self.held()
        self._granted(revision, sent_s)
        return True

    async def release(self) -> None:
        """Give the lease up now (a drain), so another node takes it without waiting for the lapse."""
        if self.token is None:
            return
        self.token = None
        try:
            await asyncio.wait_for(self._kv.delete(self._key, last=self._revision), LEASE_REQUEST_S_MAX)
        except (nats.js.errors.KeyWrongLastSequenceError, *_TRANSIENT):
            pass  # someone else's already, or it lapses by itself

    def _granted(self, revision: int, sent_s: float) -> None:
        self._revision = revision
        self._held_until_s = sent_s + (self.timing.ttl_ms - self.timing.margin_ms) / 1000


async def lease_holder(kv, partition: int) -> tuple[LeaseRecord, int] | None:
    """(who holds the partition's lease, its fencing token), or None when no one does."""
    try:
        entry = await kv.get(lease_key(partition))
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    record = _decode(entry.value)
    return record, record.token or entry.revision
