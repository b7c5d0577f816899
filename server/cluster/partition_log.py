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
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import nats.js.errors
from nats.js.api import Header

from kassa.server.cluster.streams import GROUP_BYTES_MAX, LOG_STREAM, TRANSIENT_ERRORS, log_subject

APPEND_S_MAX = 10.0  # retries of one publish (through a stream leader's election) end after this
APPEND_ATTEMPT_S_MAX = 2.0  # one publish request
APPEND_RETRY_PAUSE_S = 0.1
READ_REQUEST_S_MAX = 2.0  # one read of the log (a message, or the subject's last sequence)
WRONG_LAST_SEQUENCE_ERR_CODE = 10071  # JSStreamWrongLastSequenceErr
MESSAGE_ID_DIGEST_BYTES = 8  # of a group's payload, in its message id
_TRANSIENT = TRANSIENT_ERRORS


class StaleWriter(Exception):
    """The log holds a group this writer has not seen: it is not the partition's only writer."""


class GroupTooLarge(ValueError):
    """A group larger than one log message (GROUP_BYTES_MAX): refused before anything is published."""


class LogUnavailable(Exception):
    """The stream did not acknowledge the group in time: it may or may not be in the log."""


class PartitionLog:
    def __init__(self, js, partition: int):
        self._js = js
        self.partition = partition
        self.subject = log_subject(partition)

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
