"""A partition's replica: the local ledger, and the log sequence it has applied up to.

Every node applies a partition's groups in log order through `apply`, the owner included (after
its publish was acknowledged): the same groups at the same `now_ms` under the same ruleset give the
same ledger on every node. The applied sequence is kept in the ledger's own LMDB environment (a
database of its own, `cluster`), so a copy of the environment carries it (snapshot).

Until the ledger takes the sequence into the group's own write transaction (the hook named in the
report: `Ledger.apply(..., meta=((key, value),))`), it is written in a transaction right after the
group's. A crash between the two re-applies that one group at the next start: its operations are
idempotent by request id, so this replays their records and writes nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib

from kassa.server.cluster.group_record import LoggedGroup, decode_group

APPLIED_DB = b"cluster"
APPLIED_SEQUENCE_KEY = b"applied_sequence"
# A warm follower that found nothing new asks again after this long (one request to the stream's
# leader per partition per follower at rest; an ordered push consumer can replace the polling).
FOLLOW_IDLE_S = 0.05


class ReplicaDiverged(Exception):
    """This replica cannot apply the group as its owner did; it must not serve the partition."""


class Replica:
    def __init__(self, ledger, partition: int):
        self.ledger = ledger
        self.partition = partition
        self._env = ledger.env  # the ledger's environment (its own transactions count in its resize gate)
        self._db = ledger.env.env.open_db(APPLIED_DB)
        with self._env.begin() as txn:
            stored = txn.get(APPLIED_SEQUENCE_KEY, db=self._db)
        self.applied_sequence = int.from_bytes(stored, "big") if stored else 0

    def ruleset_version(self) -> str:
        """The version the ledger applies the next group under (the stored ruleset, if any)."""
        self.ledger.refresh_program()
        return self.ledger.program.version

    def apply(self, sequence: int, group: LoggedGroup) -> list | None:
        """Apply the group at log `sequence`; its outcomes, or None when it was applied before."""
        if sequence <= self.applied_sequence:
            return None
        if group.partition != self.partition:
            raise ReplicaDiverged(f"group at {sequence} is for partition {group.partition}, not {self.partition}")
        serving = self.ruleset_version()
        if serving != group.ruleset_version:
            raise ReplicaDiverged(
                f"partition {self.partition}: group at {sequence} was applied under ruleset "
                f"'{group.ruleset_version}', this replica serves '{serving}' (different rule files?)")
        outcomes = self.ledger.apply(list(group.ops), group.now_ms) if group.ops else []
        with self._env.begin(write=True) as txn:
            txn.put(APPLIED_SEQUENCE_KEY, sequence.to_bytes(8, "big"), db=self._db)
        self.applied_sequence = sequence
        return outcomes

    async def catch_up(self, log, to_sequence: int | None = None) -> int:
        """Apply the log's groups after `applied_sequence` up to `to_sequence` (default: the log's
        end now). Returns how many groups it applied."""
        if to_sequence is None:
            to_sequence = await log.end()
        applied = 0
        while self.applied_sequence < to_sequence:
            found = await log.read(self.applied_sequence + 1)
            if found is None:
                break
            sequence, payload = found
            self.apply(sequence, decode_group(payload))
            applied += 1
        return applied

    async def follow(self, log, stop: asyncio.Event) -> None:
        """Keep applying the log as it grows (a warm follower), until `stop` is set."""
        while not stop.is_set():
            if await self.catch_up(log) == 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), FOLLOW_IDLE_S)
