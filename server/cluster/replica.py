"""A partition's replica: the local ledger, and the log sequence it has applied up to.

Every node applies a partition's groups in log order through `apply`, the owner included (after
its publish was acknowledged): the same groups at the same `now_ms` under the same ruleset give the
same ledger on every node. The applied sequence is written into the ledger's `meta` database in the
group's own write transaction (`Ledger.apply(..., meta=...)`), so it commits with the group: a crash
never leaves a group applied and its position unrecorded, and a copy of the environment carries it
(snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from kassa.server.cluster.group_record import LoggedGroup, decode_group
from kassa.server.cluster.partition_log import LogTrimmed

META_DB = b"meta"  # the ledger's database of its own bookkeeping
APPLIED_SEQUENCE_KEY = b"cluster.applied_sequence"  # in META_DB
# A warm follower that found nothing new asks again after this long (one request to the stream's
# leader per partition per follower at rest; an ordered push consumer can replace the polling).
FOLLOW_IDLE_S = 0.05


class ReplicaDiverged(Exception):
    """This replica cannot apply the group as its owner did; it must not serve the partition."""


def stored_sequence(ledger, txn=None) -> int:
    """The log sequence the ledger's copy has applied up to (0: none), read in `txn` or a new one."""
    if txn is None:
        with ledger.env.begin() as txn:  # through the ledger's resize gate
            return stored_sequence(ledger, txn)
    meta = ledger.env.env.open_db(META_DB, txn=txn, create=False)  # the ledger's database, opened in this read
    stored = txn.get(APPLIED_SEQUENCE_KEY, db=meta)
    return int.from_bytes(stored, "big") if stored else 0


class Replica:
    def __init__(self, ledger, partition: int):
        self.ledger = ledger
        self.partition = partition
        self.applied_sequence = stored_sequence(ledger)
        # The owner applies in its commit thread, a follower on the event loop: one at a time, so a
        # group is never applied twice by a node changing roles.
        self._applying = threading.Lock()

    def ruleset_version(self) -> str:
        """The version the ledger applies the next group under (the stored ruleset, if any)."""
        self.ledger.refresh_program()
        return self.ledger.program.version

    def apply(self, sequence: int, group: LoggedGroup) -> list | None:
        """Apply the group at log `sequence`; its outcomes, or None when it was applied before."""
        with self._applying:
            if sequence <= self.applied_sequence:
                return None
            return self._apply_next(sequence, group)

    def _apply_next(self, sequence: int, group: LoggedGroup) -> list:
        if group.partition != self.partition:
            raise ReplicaDiverged(f"group at {sequence} is for partition {group.partition}, not {self.partition}")
        serving = self.ruleset_version()
        if serving != group.ruleset_version:
            raise ReplicaDiverged(
                f"partition {self.partition}: group at {sequence} was applied under ruleset "
                f"'{group.ruleset_version}', this replica serves '{serving}' (different rule files?)")
        outcomes = self.ledger.apply(list(group.ops), group.now_ms,
                                     meta=((APPLIED_SEQUENCE_KEY, sequence.to_bytes(8, "big")),))
        self.applied_sequence = sequence
        return outcomes

    async def catch_up(self, log, to_sequence: int | None = None) -> int:
        """Apply the log's groups after `applied_sequence` up to `to_sequence` (default: the log's
        end now), read in batches. Returns how many groups it applied. A replica that needs groups
        the log was trimmed of (behind a snapshot) cannot follow it: ReplicaDiverged."""
        if to_sequence is None:
            to_sequence = await log.end()
        applied = 0
        while self.applied_sequence < to_sequence:
            try:
                batch = await log.read_batch(self.applied_sequence + 1)
            except LogTrimmed as error:
                raise ReplicaDiverged(f"{error}: this replica applied up to {self.applied_sequence}. Stop the "
                                      "node, empty its ledger directory and start it: it starts from the latest "
                                      "snapshot") from error
            if not batch:
                break
            for sequence, payload in batch:
                if sequence > to_sequence:
                    return applied
                if self.apply(sequence, decode_group(payload)) is not None:
                    applied += 1
        return applied

    async def follow(self, log, stop: asyncio.Event) -> None:
        """Keep applying the log as it grows (a warm follower), until `stop` is set."""
        while not stop.is_set():
            if await self.catch_up(log) == 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), FOLLOW_IDLE_S)
