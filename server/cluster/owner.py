"""A partition's owner: lease, log and replica together.

`acquire` takes the lease, applies the log to its end, then appends an empty marker group at that
end. The marker moves the partition's last sequence, so a previous owner that still believes it
holds the lease (paused, partitioned) has its next append refused by the log, before it applies or
answers anything. `commit` then appends each group and applies it once the quorum has it.
"""

from __future__ import annotations

import asyncio

from kassa.server.cluster.group_record import LoggedGroup, decode_group, encode_group
from kassa.server.cluster.partition_log import LogUnavailable, PartitionLog, StaleWriter


class NotOwner(Exception):
    """This node does not hold the partition's lease (or lost it): the call goes to the owner."""


class PartitionOwner:
    def __init__(self, lease, log: PartitionLog, replica, clock):
        self.lease = lease
        self.log = log
        self.replica = replica
        self._clock = clock
        self.partition = log.partition
        # One group in flight at a time: each append expects the sequence the previous one got.
        self._appending = asyncio.Lock()
        self._uncertain = False  # an append went unanswered: it may be in the log

    def serving(self) -> bool:
        return self.lease.held() and self.lease.token is not None

    async def acquire(self) -> bool:
        """Take the lease if it is free; then catch up and fence the log. True when serving."""
        if not await self.lease.take():
            return False
        try:
            # Under the append lock: a call that finds this node serving now waits for the catch-up
            # and the marker, rather than appending after a position the log has moved past.
            async with self._appending:
                await self.replica.catch_up(self.log)
                sequence, group = await self._append_next((), None)
                self.apply_appended(sequence, group)
        except (StaleWriter, LogUnavailable):  # another writer appended while we caught up, or the log
            await self.lease.release()         # cannot be read now: leave the lease to whoever can serve
            return False
        return self.serving()

    async def give_up(self) -> None:
        """Hand the lease back (placement: another node holds fewer), between two appends, so
        that no group of this node is in flight when the next owner fences the log."""
        async with self._appending:
            await self.lease.release()

    async def commit(self, ops: list, now_ms: int | None = None) -> list:
        """Log `ops` as one group (at `now_ms`, default the clock's now), apply them, and return
        their outcomes."""
        return await self._append(tuple(ops), now_ms)

    async def append(self, ops: list, now_ms: int) -> tuple[int, LoggedGroup]:
        """Log `ops` as one group without applying it: for a committer that applies in a thread of
        its own (`apply_appended`) before it appends the next one. (sequence, group)."""
        async with self._appending:
            return await self._append_next(tuple(ops), now_ms)

    def apply_appended(self, sequence: int, group: LoggedGroup) -> list:
        try:
            return self.replica.apply(sequence, group)
        except BaseException:  # logged but not applied here (a full disk, a diverged replica): this
            self._step_down()  # copy is behind its own log, so another node must serve
            raise

    async def _append(self, ops: tuple, now_ms: int | None = None) -> list:
        async with self._appending:
            sequence, group = await self._append_next(ops, now_ms)
            return self.apply_appended(sequence, group)

    async def _append_next(self, ops: tuple, now_ms: int | None) -> tuple[int, LoggedGroup]:
        if not self.serving():
            raise NotOwner(f"this node does not hold partition {self.partition}'s lease")
        if self._uncertain:
            await self._settle()
        now_ms = self._clock.now_ms() if now_ms is None else now_ms
        group = LoggedGroup(self.partition, self.lease.token, now_ms, self.replica.ruleset_version(), ops)
        try:
            sequence = await self.log.append(encode_group(group), self.replica.applied_sequence, self.lease.token)
        except StaleWriter:
            self._step_down()
            raise
        except (LogUnavailable, asyncio.CancelledError):
            self._uncertain = True  # its callers get UNAVAILABLE; the next append settles it first
            raise
        return sequence, group

    async def _settle(self) -> None:
        """After an unanswered append: apply what of ours reached the log. A group under another
        token there means another owner wrote: this node is stale."""
        end = await self.log.end()
        while self.replica.applied_sequence < end:
            found = await self.log.read(self.replica.applied_sequence + 1)
            if found is None:
                break
            sequence, payload = found
            group = decode_group(payload)
            if group.token != self.lease.token:
                self._step_down()
                raise StaleWriter(f"partition {self.partition}: the log holds another owner's group at {sequence}")
            self.replica.apply(sequence, group)
        self._uncertain = False

    def _step_down(self) -> None:
        """The log says someone else owns the partition now: stop serving it at once."""
        self.lease.token = None
