"""A partition's write-ahead log: its subject in the replicated stream KASSA_LOG.

`append` publishes one encoded group with two headers:
- `Nats-Expected-Last-Subject-Sequence`: the sequence of the last group this writer has seen on the
  partition's subject. If anything else was appended since (a new owner's marker, another writer's
  group), the stream refuses the publish and `append` raises `StaleWriter`: two owners can never
  both commit, whatever their leases and clocks say.
- `Nats-Msg-Id` (partition, token, expected sequence, a digest of the group): a publish retried
  after a lost answer (a timeout, a server killed) within the stream's deduplication window is
  answered with the first one's sequence instead of being stored twice; a "duplicate" answer is
  checked against what the log holds there, so another group is never acknowledged in its place.
The publish returns once the stream's quorum stored the group; only then may the owner apply it and
answer the callers.

A follower reads the log in batches (`read_batch`) through an ephemeral pull consumer of its own on
the partition's subject (no acks, state in memory, deleted by the servers when unused for
READER_IDLE_S_MAX): one request brings up to READ_BATCH_GROUPS_MAX groups, in log order, where a
read by sequence (`read`) brings one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

import nats.errors
import nats.js.api as api
import nats.js.errors
from nats.js.api import Header

from kassa.server.cluster.streams import (
    GROUP_BYTES_MAX, LOG_START_HEADER, LOG_STREAM, SNAPSHOT_BUCKET, TRANSIENT_ERRORS, log_subject, snapshot_name,
)

APPEND_S_MAX = 10.0  # retries of one publish (through a stream leader's election) end after this
APPEND_ATTEMPT_S_MAX = 2.0  # one publish request
APPEND_RETRY_PAUSE_S = 0.1
READ_REQUEST_S_MAX = 2.0  # one read of the log (a message, or the subject's last sequence)
# Groups one batched read brings: each is at most GROUP_BYTES_MAX, so a batch holds at most 64 MiB.
READ_BATCH_GROUPS_MAX = 64
READ_BATCH_WAIT_S = 0.5  # a batched read that finds nothing returns empty after this long
READER_IDLE_S_MAX = 30.0  # the servers delete a reader's consumer unused for this long
WRONG_LAST_SEQUENCE_ERR_CODE = 10071  # JSStreamWrongLastSequenceErr
MESSAGE_ID_DIGEST_BYTES = 8  # of a group's payload, in its message id
_TRANSIENT = TRANSIENT_ERRORS


class StaleWriter(Exception):
    """The log holds a group this writer has not seen: it is not the partition's only writer."""


class GroupTooLarge(ValueError):
    """A group larger than one log message (GROUP_BYTES_MAX): refused before anything is published."""


class LogTrimmed(Exception):
    """The groups a reader needs next were trimmed from the log (behind a snapshot)."""


class LogUnavailable(Exception):
    """The stream did not acknowledge the group in time: it may or may not be in the log."""


class PartitionLog:
    def __init__(self, js, partition: int):
        self._js = js
        self.partition = partition
        self.subject = log_subject(partition)
        self._reader = None  # the pull subscription of read_batch, while it reads on
        self._reader_next = 0  # the sequence the reader's next group must be at or after
        self._reader_delivered = 0  # the consumer sequence of the last group it delivered

    async def end(self) -> int:
        """The sequence of the partition's last group (0: none yet), asked of the stream's leader."""
        deadline_s = time.monotonic() + APPEND_S_MAX
        while True:
            try:
                message = await asyncio.wait_for(self._js.get_last_msg(LOG_STREAM, self.subject), READ_REQUEST_S_MAX)
                return message.seq
            except nats.js.errors.NotFoundError:
                return 0
            except _TRANSIENT:
                if time.monotonic() >= deadline_s:
                    raise LogUnavailable(f"partition {self.partition}: the log's end could not be read")
                await asyncio.sleep(APPEND_RETRY_PAUSE_S)

    async def append(self, payload: bytes, expected_last_sequence: int, token: int) -> int:
        """Store one encoded group after `expected_last_sequence`; its stream sequence."""
        if len(payload) > GROUP_BYTES_MAX:
            raise GroupTooLarge(f"a commit group of {len(payload)} bytes exceeds GROUP_BYTES_MAX ({GROUP_BYTES_MAX})")
        # Unique per group, the same for a retry of it: an id of the position alone would let another
        # group sent at the same position (after an unanswered one that was stored late) be answered
        # as that one's duplicate, and acknowledged though the log holds the other.
        message_id = (f"{self.partition}:{token}:{expected_last_sequence}:"
                      f"{hashlib.blake2b(payload, digest_size=MESSAGE_ID_DIGEST_BYTES).hexdigest()}")
        deadline_s = time.monotonic() + APPEND_S_MAX
        while True:
            headers = {Header.MSG_ID: message_id,
                       Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected_last_sequence)}
            try:
                ack = await self._js.publish(self.subject, payload, timeout=APPEND_ATTEMPT_S_MAX, stream=LOG_STREAM,
                                             headers=headers)
                if ack.duplicate:
                    await self._check_duplicate(ack.seq, payload)
                return ack.seq
            except nats.js.errors.APIError as error:
                if error.err_code == WRONG_LAST_SEQUENCE_ERR_CODE:
                    raise StaleWriter(f"partition {self.partition}: the log moved past sequence "
                                      f"{expected_last_sequence}; another owner wrote to it") from error
                if not isinstance(error, nats.js.errors.ServiceUnavailableError):
                    raise
            except _TRANSIENT:
                pass
            if time.monotonic() >= deadline_s:
                raise LogUnavailable(f"partition {self.partition}: no acknowledgement within {APPEND_S_MAX} s")
            await asyncio.sleep(APPEND_RETRY_PAUSE_S)

    async def _check_duplicate(self, sequence: int, payload: bytes) -> None:
        """A publish answered as a duplicate: the group at `sequence` must be this one (a retry of
        it); anything else there means this group was not stored."""
        stored = await self.read(sequence)
        if stored is None or stored[0] != sequence or stored[1] != payload:
            raise LogUnavailable(f"partition {self.partition}: sequence {sequence} holds another group than the "
                                 "one sent; it was not stored")

    async def read(self, from_sequence: int) -> tuple[int, bytes] | None:
        """The partition's first group at or after `from_sequence`: (sequence, payload), or None."""
        deadline_s = time.monotonic() + APPEND_S_MAX
        while True:
            try:
                message = await asyncio.wait_for(
                    self._js.get_msg(LOG_STREAM, seq=from_sequence, subject=self.subject, next=True),
                    READ_REQUEST_S_MAX)
                return message.seq, message.data
            except nats.js.errors.NotFoundError:
                return None
            except _TRANSIENT:
                if time.monotonic() >= deadline_s:
                    raise LogUnavailable(f"partition {self.partition}: the log could not be read")
                await asyncio.sleep(APPEND_RETRY_PAUSE_S)

    async def start(self) -> int:
        """The log start the partition's latest snapshot recorded: the groups before it may have been
        purged (server/cluster/snapshot.py). 0 when it has no snapshot, or the snapshot none."""
        store = await self._js.object_store(SNAPSHOT_BUCKET)
        try:
            info = await store.get_info(snapshot_name(self.partition))
        except nats.js.errors.ObjectNotFoundError:
            return 0
        return int((info.headers or {}).get(LOG_START_HEADER, ["0"])[0])

    async def first(self) -> int:
        """The sequence of the partition's first group still in the log (0: none)."""
        found = await self.read(1)
        return 0 if found is None else found[0]

    async def read_batch(self, from_sequence: int) -> list[tuple[int, bytes]]:
        """The partition's groups at or after `from_sequence`, in log order, as many as one request
        brings (READ_BATCH_GROUPS_MAX): [(sequence, payload), ...], [] when there are none yet."""
        deadline_s = time.monotonic() + APPEND_S_MAX
        while True:
            try:
                return await self._fetch(from_sequence)
            except (nats.js.errors.NotFoundError, *_TRANSIENT):  # NotFound: the servers dropped the consumer
                await self.close_reader()
                if time.monotonic() >= deadline_s:
                    raise LogUnavailable(f"partition {self.partition}: the log could not be read")
                await asyncio.sleep(APPEND_RETRY_PAUSE_S)

    async def _fetch(self, from_sequence: int) -> list[tuple[int, bytes]]:
        if self._reader is None or self._reader_next != from_sequence:
            await self._open_reader(from_sequence)
        try:
            messages = await self._reader.fetch(READ_BATCH_GROUPS_MAX, timeout=READ_BATCH_WAIT_S)
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            return []
        found = []
        for message in messages:
            delivered = message.metadata.sequence.consumer
            if delivered != self._reader_delivered + 1:  # a gap in what the consumer sent: read again from here
                await self.close_reader()
                break
            self._reader_delivered = delivered
            found.append((message.metadata.sequence.stream, message.data))
        if found:
            self._reader_next = found[-1][0] + 1
        return found

    async def _open_reader(self, from_sequence: int) -> None:
        await self.close_reader()
        start = await self.start()
        if from_sequence < start:
            raise LogTrimmed(f"partition {self.partition}: the groups from {from_sequence} on are needed, the log "
                             f"was trimmed up to {start} behind a snapshot")
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=max(1, from_sequence), ack_policy=api.AckPolicy.NONE,
                                    inactive_threshold=READER_IDLE_S_MAX, mem_storage=True, num_replicas=1)
        self._reader = await asyncio.wait_for(
            self._js.pull_subscribe(self.subject, stream=LOG_STREAM, config=config), READ_REQUEST_S_MAX)
        self._reader_next = from_sequence
        self._reader_delivered = 0

    async def close_reader(self) -> None:
        """Stop the batched reader (its consumer goes when unused for READER_IDLE_S_MAX)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(*_TRANSIENT):
                await reader.unsubscribe()
