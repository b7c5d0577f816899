"""Partitions: the relay of outboxes (core_ext/outbox.py) to the related customers' partitions.

An event whose related customer is in another partition leaves the related share in its own
partition's outbox. The relay credits it there under the request id `<event's>/related`, and rolls
that credit back (`<event's>/related/rollback`) when the event was rolled back: both are ledger
operations like any other, so a relay run twice (two workers, a run cut short by a crash and run
again at the next start) is applied once, and a rollback relayed before its credit leaves a
tombstone that refuses the late credit. The relay runs at start, when a group may have left work,
and every RELAY_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from kassa.core_ext.model import Code, RelatedCreditOp, RollbackOp
from kassa.core_ext.outbox import (
    DONE_PREFIX, ROLLBACK_SUFFIX, WORK_PREFIX, OutboxState, decode_outbox, done_key, encode_outbox, pending_moves,
    related_request_id, work_key,
)

log = logging.getLogger("kassa.relay")

RELAY_INTERVAL_S = 1  # how often the outboxes are looked at, besides after each group that may fill one
RELAY_BATCH_MAX = 1000  # outbox records relayed by one submit, per partition
DIGEST_BYTES = 16


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=DIGEST_BYTES).digest()


def relay_op(request_id: str, record):
    """The operation that carries out an outbox record in the related customer's partition."""
    credit_id = related_request_id(request_id)
    if record.state == OutboxState.REVERSE:
        return RollbackOp(credit_id + ROLLBACK_SUFFIX, _digest("rollback", credit_id), original_request_id=credit_id,
                          actor=record.actor)
    return RelatedCreditOp(credit_id, _digest(record.account_id, record.points, record.event_type,
                                              record.ruleset_version, record.activate_at_ms, record.expire_at_ms),
                           record.account_id, record.points, record.event_type, record.ruleset_version,
                           record.activate_at_ms, record.expire_at_ms, record.actor)


def _settled(outcome) -> bool:
    """Whether a relayed operation is done with: applied, or refused for good (a credit after the
    event's rollback, a rollback of what was rolled back already)."""
    return outcome.code in (Code.OK, Code.FAILED_PRECONDITION)


class Relay:
    def __init__(self, ledger, committer, owns=None):
        self._ledger = ledger
        self._committer = committer
        self._owns = owns  # in a cluster, `owns(partition)`: only the partition's owner relays its outbox
        self._wanted = asyncio.Event()

    def kick(self) -> None:
        self._wanted.set()

    async def run_periodically(self, interval_s: float) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a relay that died would leave every later outbox record unrelayed
                log.exception("outbox relay failed; the next run retries")
            try:
                await asyncio.wait_for(self._wanted.wait(), interval_s)
            except TimeoutError:
                pass
            self._wanted.clear()

    async def run_once(self) -> int:
        """Relay what every partition's outbox holds; returns the records settled."""
        settled = 0
        for index, ledger in enumerate(self._ledger.parts):
            if self._owns is not None and not self._owns(index):
                continue
            for moving in await asyncio.to_thread(pending_moves, ledger):  # members a crash left mid-move
                outcome = await self._committer.finish_move(index, moving)
                if outcome.code not in (Code.OK, Code.FAILED_PRECONDITION):
                    log.warning("outbox relay of the move %r refused: %s", moving.request_id, outcome.message)
            work = await asyncio.to_thread(pending_work, ledger, RELAY_BATCH_MAX)
            if not work:
                continue
            outcomes = await self._committer.submit([relay_op(request_id, record) for request_id, record in work])
            done = []
            for (request_id, record), outcome in zip(work, outcomes):
                if _settled(outcome):
                    done.append((request_id, record.state))
                else:
                    log.warning("outbox relay of %r refused: %s", request_id, outcome.message)
            settled += await self._committer.mark_relayed(index, done)
        return settled


def _outbox(ledger):
    txn, dbs = ledger.raw_transaction()
    return txn, dbs["outbox"]


def pending_work(ledger, count_max: int) -> list:
    """(event request id, record) of up to `count_max` records to relay, oldest request id first."""
    txn, outbox = _outbox(ledger)
    work = []
    with txn, txn.cursor(db=outbox) as cursor:
        if not cursor.set_range(WORK_PREFIX):
            return work
        for key, value in cursor:
            if not key.startswith(WORK_PREFIX) or len(work) >= count_max:
                break
            work.append((key[len(WORK_PREFIX):].decode(), decode_outbox(value)))
    return work


def mark_done(ledger, done: list) -> int:
    """Settle relayed records still in the state they were relayed in (a rollback of the event may
    have turned a credit into a reversal meanwhile: that one is relayed next)."""
    if not done:
        return 0
    _, outbox = _outbox(ledger)  # (a transaction not begun until entered)
    settled = 0
    with ledger.env.begin(write=True) as txn:
        for request_id, state in done:
            stored = txn.get(work_key(request_id), db=outbox)
            if stored is None or decode_outbox(stored).state != state:
                continue
            record = decode_outbox(stored)
            txn.delete(work_key(request_id), db=outbox)
            if state == OutboxState.PENDING:
                record.state = OutboxState.CREDITED
                txn.put(done_key(request_id), encode_outbox(record), db=outbox)
            else:
                txn.delete(done_key(request_id), db=outbox)
            settled += 1
    return settled


def outbox_counts(ledger) -> tuple[int, int]:
    """(records to relay, records relayed and kept), for tests and tools."""
    txn, outbox = _outbox(ledger)
    with txn, txn.cursor(db=outbox) as cursor:
        keys = list(cursor.iternext(values=False))
    return sum(key.startswith(WORK_PREFIX) for key in keys), sum(key.startswith(DONE_PREFIX) for key in keys)
