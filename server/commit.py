"""Group commit: operations that arrive while a commit runs go together into the next one.

Callers hand in a list of operations (one for a unary call, many for a batch or a stream message)
and await one future for the whole list. A single commit thread runs `Ledger.apply` on groups of up
to `batch_max` operations, one LMDB write transaction and one fsync per group, so the event loop
never blocks on a commit and the per-call cost is paid once per group, not once per operation. The
group is taken from the queue once the thread holds LMDB's writer lock: while other workers'
commits keep this one waiting, what arrives meanwhile joins it.

A group waits `wait_us_max` for more callers to join it, unless the last few groups were small
(one or two callers each): then few are there to share the sync, and a lone caller (one terminal at
a quiet store, a client sending one call at a time) or a worker serving a few terminals is
committed at once instead of after the wait. The first larger group brings the wait back.

On SIGTERM the server drains (`drain`): groups shrink to `DRAIN_GROUP_OPERATIONS_MAX` operations,
so the one running at the drain's deadline ends soon after it, and none starts past the deadline.
What is still queued then is answered UNAVAILABLE, never committed: a caller retries it elsewhere
or after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from kassa.core_ext.ledger import LedgerError
from kassa.core_ext.model import Code, Outcome, rejected

log = logging.getLogger("kassa.commit")
SMALL_GROUP_CALLERS_MAX = 2  # a group of at most this many callers is small
SMALL_GROUPS_BEFORE_NO_WAIT = 3  # small groups in a row, after which a group commits at once
# Operations in one group while draining (at least one caller's whole list): some 50-100 ms of
# commit, so the group running when the drain's deadline comes does not hold the exit back.
DRAIN_GROUP_OPERATIONS_MAX = 1_000
SHUTTING_DOWN = "the server is shutting down; this was not recorded: send it again"


class GroupCommitter:
    def __init__(self, ledger, clock, batch_max: int, wait_us_max: int, metrics=None):
        self._metrics = metrics
        self._ledger = ledger
        self._clock = clock
        self._batch_max = batch_max
        self._wait_s = wait_us_max / 1_000_000
        self._queue: deque[tuple[list, asyncio.Future]] = deque()
        self._in_flight: set[str] = set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kassa-commit")
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()  # set while no commit runs
        self.idle.set()
        self._task: asyncio.Task | None = None
        self.groups_committed = 0
        self._small_groups = 0  # small groups in a row
        self.ops_committed = 0
        self._deadline_s: float | None = None  # time.monotonic() past which no group starts
        self._stopping = False
        self.refusing = False  # past the drain's deadline: nothing more is committed

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kassa-group-commit")

    def drain(self, deadline_s: float) -> None:
        """From now on commit in small groups, and start none after `deadline_s` (time.monotonic())."""
        self._deadline_s = deadline_s
        self._batch_max = min(self._batch_max, DRAIN_GROUP_OPERATIONS_MAX)

    def _past_deadline(self) -> bool:
        return self._deadline_s is not None and time.monotonic() >= self._deadline_s

    async def stop(self) -> None:
        """Commit what is queued (up to the drain's deadline, if `drain` set one), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, ops: list, abort_in_flight: bool = True) -> list[Outcome]:
        """Commit `ops` (in this order, within one group); one outcome each, after the durable commit.

        An operation whose request_id is being committed right now for another caller is answered
        ABORTED at once: the client retries and then gets the replayed response. With
        `abort_in_flight` false it queues behind the first instead and gets the replayed response:
        groups commit in order, so it sees the first one's idempotency record (a stream re-sending
        an event it has not seen acked yet)."""
        outcomes: list[Outcome | None] = [None] * len(ops)
        accepted = []
        positions = []
        batch_ids = set()
        for position, op in enumerate(ops):
            if abort_in_flight and op.request_id in self._in_flight and op.request_id not in batch_ids:
                outcomes[position] = rejected(
                    Code.ABORTED, f"request_id '{op.request_id}' is in flight; retry after it is answered"
                )
                continue
            if op.request_id and op.request_id not in self._in_flight:
                batch_ids.add(op.request_id)
            accepted.append(op)
            positions.append(position)
        if accepted and (self._stopping or self.refusing):  # the committer is gone or going
            for position in positions:
                outcomes[position] = rejected(Code.UNAVAILABLE, SHUTTING_DOWN)
            accepted = []
        if accepted:
            self._in_flight.update(batch_ids)
            future = asyncio.get_running_loop().create_future()
            self._queue.append((accepted, future))
            self._wake.set()
            try:
                # A caller cancelled meanwhile cancels its future: its operations still commit with
                # the group (the committer skips a done future), and a retry replays their record.
                results = await future
            finally:
                self._in_flight.difference_update(batch_ids)
            for position, outcome in zip(positions, results):
                outcomes[position] = outcome
        return outcomes  # type: ignore[return-value]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._wait_s and self._small_groups < SMALL_GROUPS_BEFORE_NO_WAIT and not self._stopping:
                await asyncio.sleep(self._wait_s)
            while self._queue:
                if self._past_deadline():
                    self._refuse_queued()
                else:
                    await self._commit_group(loop)
            if self._stopping:
                return

    async def _commit_group(self, loop) -> None:
        group: list[tuple[list, asyncio.Future]] = []
        ops: list = []  # the ledger fills it with what `take` returns

        def take() -> tuple[list, int]:
            """In the commit thread, once LMDB's writer lock is held: what is queued by now, and the
            time to apply it at. With other workers committing, what arrived while this one waited
            for the lock joins this group; past the drain's deadline, nothing does."""
            if not self._past_deadline():
                group.extend(self._take_group())
            return [op for chunk, _ in group for op in chunk], self._clock.now_ms()

        started = time.perf_counter()
        self.idle.clear()
        try:
            # now_ms 0: `take` gives the time, once the lock is held
            results = await loop.run_in_executor(self._executor, self._ledger.apply, ops, 0, take)
        except Exception as error:
            group = group or self._take_group()  # refused before it took any: answer those queued
            count = sum(len(chunk) for chunk, _ in group)
            if isinstance(error, LedgerError):
                refusal = rejected(error.code, str(error))
            else:  # a bug: answer, log, and keep serving
                log.exception("commit of %d operations failed", count)
                refusal = rejected(Code.INTERNAL, f"internal error: {type(error).__name__}")
            results = [refusal] * count
        self.idle.set()
        if not group:  # the deadline came while this group waited for the writer lock
            return
        if self._metrics is not None:
            self._metrics.observe_commit(len(results), time.perf_counter() - started)
        self.groups_committed += 1
        self._small_groups = self._small_groups + 1 if len(group) <= SMALL_GROUP_CALLERS_MAX else 0
        self.ops_committed += len(results)
        start = 0
        for chunk, future in group:
            if not future.done():
                future.set_result(results[start : start + len(chunk)])
            start += len(chunk)

    def _refuse_queued(self) -> None:
        """Past the drain's deadline: every queued caller is answered UNAVAILABLE, nothing of theirs
        committed (`refusing` is set before any of them sees it)."""
        self.refusing = True
        refusal = rejected(Code.UNAVAILABLE, SHUTTING_DOWN)
        while self._queue:
            chunk, future = self._queue.popleft()
            if not future.done():
                future.set_result([refusal] * len(chunk))

    def _take_group(self) -> list[tuple[list, asyncio.Future]]:
        """Whole chunks, up to `batch_max` operations (at least one chunk, however large)."""
        group = []
        count = 0
        while self._queue and (not group or count + len(self._queue[0][0]) <= self._batch_max):
            chunk = self._queue.popleft()
            group.append(chunk)
            count += len(chunk[0])
        return group
