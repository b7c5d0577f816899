"""A kassa node in a cluster: the server's side of the partition layer.

`ClusterNode.connect` joins the NATS servers (creating the log stream, lease and snapshot buckets
if this is the first node) and builds one `PartitionOwner` per partition this node serves. `run`
then keeps, per partition, one loop going: while this node holds the lease it renews it; while
another node does, it applies the log as it grows (a warm follower) and remembers the owner's
address, where calls for the partition are forwarded (server/cluster/forward.py); when no one
holds it, it takes it (the owner applies the log to its end and fences it before it serves).

With `cluster.partitions = P > 1` the node's ledger is a partitioned one (core_ext/partitions.py:
P LMDBs and a directory): each partition has its own lease, log and loop, and the leases are spread
over the live nodes (`_may_take`, `_should_give_up`): a node takes a free lease while it holds fewer
than its share (ceil(P / live nodes)), or any lease left free for FREE_LEASE_GRACE_S; a node holding
at least two more than the live node holding fewest gives its highest one up, one every
REBALANCE_PAUSE_S. Calls are not forwarded whole then: each operation goes to its partition's owner
(server/cluster/routing.py), after the same directory look-up the single-node router does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import time

import nats
import nats.js.errors

from kassa.core_ext.model import Code
from kassa.core_ext.partitions import partition_path
from kassa.server.cluster.committing import LoggedLedger
from kassa.server.cluster.placed import PlacedLedger, split_budgets
from kassa.server.cluster.events import consume_events
from kassa.server.cluster.lease import PartitionLease, lease_holder
from kassa.server.cluster.owner import NotOwner, PartitionOwner
from kassa.server.cluster.partition_log import LogUnavailable, PartitionLog, StaleWriter
from kassa.server.cluster.replica import FOLLOW_IDLE_S, Replica, ReplicaDiverged
from kassa.server.cluster.snapshot import LMDB_DATA_FILE, restore_snapshot, snapshot_and_trim
from kassa.server.cluster.status import NODE_REPORT_INTERVAL_S, NodeReport, now_ms, read_reports, write_report
from kassa.server.cluster.streams import LEASE_BUCKET, NODES_BUCKET, TRANSIENT_ERRORS, ensure_streams
from kassa.server.logs import event

log = logging.getLogger("kassa.cluster")

NATS_CONNECT_S_MAX = 5.0  # the first connection to the NATS servers at start
NATS_RECONNECT_WAIT_S = 0.1  # between reconnection attempts after a NATS server was lost
JETSTREAM_REQUEST_S_MAX = 2.0  # one JetStream API request
LEASE_LOOK_INTERVAL_S = 0.1  # a follower asks who holds the lease this often (a takeover's delay)
SNAPSHOT_STAGING_SUFFIX = ".restoring"  # beside the ledger's directory, while a snapshot downloads
FREE_LEASE_GRACE_S = 1.0  # a lease left free this long is taken by a node over its share too
REBALANCE_PAUSE_S = 2.0  # a node gives up at most one lease this often (the taker must catch up first)
REBALANCE_CONFIRM_S = 0.5  # the imbalance is seen this long before a lease is given up
NODE_LIVE_AGE_MS = 3_000  # a node whose last report is older is not counted live (for the shares)


class ClusterRefused(Exception):
    """A cluster configuration this node cannot serve: the server does not start, and says why."""


def partition_of(method: str, partitions: int) -> int:
    """The partition a whole call is forwarded for (one partition: 0). With more, calls are not
    forwarded whole: each operation is routed to its partition's owner (server/cluster/routing.py)."""
    del method, partitions
    return 0


def replica_paths(ledger_path: str, partitions: int) -> list[str]:
    """Where each partition's LMDB lives: the ledger itself for one, `p<n>` under it for more."""
    return [ledger_path] if partitions == 1 else [partition_path(ledger_path, index) for index in range(partitions)]


async def restore(js, ledger_path: str, partition: int = 0) -> bool:
    """The partition's latest snapshot as `ledger_path`'s LMDB file, whole or not at all (downloaded
    beside it, then renamed into place); False when there is none."""
    staging = ledger_path.rstrip("/") + SNAPSHOT_STAGING_SUFFIX
    shutil.rmtree(staging, ignore_errors=True)  # a download cut short by an earlier start
    if not await restore_snapshot(js, partition, staging):
        return False
    os.makedirs(ledger_path, exist_ok=True)
    os.replace(os.path.join(staging, LMDB_DATA_FILE), os.path.join(ledger_path, LMDB_DATA_FILE))
    shutil.rmtree(staging, ignore_errors=True)
    return True


class ClusterNode:
    def __init__(self, settings, ledger, clock, client, js, kv, nodes_kv):
        self.settings = settings
        self.node_id = settings.node_id
        self._client = client
        self.js = js
        self.kv = kv
        self._nodes_kv = nodes_kv
        self.partitions = settings.partitions
        timing = settings.lease_timing()
        self.owners = [PartitionOwner(PartitionLease(kv, index, settings.node_id, settings.advertise, timing),
                                      PartitionLog(js, index), Replica(replica_ledger, index), clock)
                       for index, replica_ledger in enumerate(_replica_ledgers(ledger, self.partitions))]
        self.owner = self.owners[0]  # the partition whole calls are forwarded for
        self.ledger = ledger
        self.clock = clock
        # Per partition: the address of the node that holds its lease when another does, and its id.
        self.owner_addresses: list[str | None] = [None] * self.partitions
        self.holders: list[str | None] = [None] * self.partitions
        self._free_since_s: list[float | None] = [None] * self.partitions
        self._gave_up_s = 0.0  # monotonic, the last lease this node gave up to balance them
        self._gave_up_partition: int | None = None
        self._imbalanced_since_s: float | None = None  # monotonic, since a live node was seen holding 2 fewer
        self._live_nodes: set[str] = {self.node_id}
        self._catching_up = [asyncio.Lock() for _ in range(self.partitions)]
        self._synced_from_s = [0.0] * self.partitions  # monotonic: when the last catch-up to the log's end asked for it
        self.catch_ups = [0] * self.partitions  # per partition, the catch-ups to its log's end run for calls
        self._stop = asyncio.Event()
        self._events_stopped = False  # the drain: no more events are read from JetStream
        self._tasks: list[asyncio.Task] = []

    @classmethod
    async def connect(cls, settings, ledger_path: str, open_ledger, clock) -> ClusterNode:
        """Join the NATS servers, then open the ledger (`open_ledger()`): a new node's empty
        `ledger_path` first gets each partition's latest snapshot, so it applies only the log after it."""
        try:
            client = await nats.connect(servers=settings.nats_urls, connect_timeout=NATS_CONNECT_S_MAX,
                                        reconnect_time_wait=NATS_RECONNECT_WAIT_S, max_reconnect_attempts=-1,
                                        name=f"kassa-{settings.node_id}")
        except (OSError, *TRANSIENT_ERRORS) as error:
            raise ClusterRefused(f"cannot reach the NATS servers {settings.nats_urls}: {error}") from error
        js = client.jetstream(timeout=JETSTREAM_REQUEST_S_MAX)
        await ensure_streams(js, settings.replicas, settings.lease_ttl_ms)
        paths = replica_paths(ledger_path, settings.partitions)
        if not any(os.path.exists(os.path.join(path, LMDB_DATA_FILE)) for path in paths):  # a new node
            for partition, path in enumerate(paths):
                if await restore(js, path, partition):
                    event(log, "restored the partition's snapshot", partition=partition, path=path)
        ledger = open_ledger()
        return cls(settings, ledger, clock, client, js, await js.key_value(LEASE_BUCKET),
                   await js.key_value(NODES_BUCKET))

    def logged_ledger(self, partition: int = 0) -> LoggedLedger:
        """What a partition's GroupCommitter commits through: the log first, then the local ledger."""
        return LoggedLedger(self.owners[partition], asyncio.get_running_loop())

    def connected(self) -> bool:
        return self._client.is_connected

    def serves_here(self) -> bool:
        """Whether this node owns partition 0: whole calls (one partition) are served here, and with
        one partition the chores (expiry sweep, compaction) run here."""
        return self.owner.serving()

    @property
    def owner_address(self) -> str | None:
        return self.owner_addresses[0]

    def owned(self) -> list[int]:
        return [owner.partition for owner in self.owners if owner.serving()]

    def can_serve(self) -> bool:
        """Health: connected, the node's loops running, and every partition has an owner (this node or
        one it forwards to)."""
        loops = self._tasks[:self.partitions]
        running = len(loops) == self.partitions and not any(task.done() for task in loops)
        return self.connected() and running and all(owner.serving() or address is not None
                                                    for owner, address in zip(self.owners, self.owner_addresses))

    async def caught_up(self, partition: int, sequence: int | None, wait_s: float) -> bool:
        """Apply the partition's log here up to `sequence` (None: its end now), e.g. a commit its
        owner made for a call of this node; False when that took longer than `wait_s` (or the log
        could not be read): the copy is then as far as it got."""
        owner = self.owners[partition]
        if sequence is not None and owner.replica.applied_sequence >= sequence:
            return True
        asked_s, started_s = time.monotonic(), None
        async with self._catching_up[partition]:  # one reader of the log per partition; the others wait for it
            if sequence is None and self._synced_from_s[partition] >= asked_s:
                return True  # a catch-up to the end that began after this call did is done: calls share it
            try:
                if sequence is None:
                    started_s = time.monotonic()
                    self.catch_ups[partition] += 1
                    sequence = await asyncio.wait_for(owner.log.end(), wait_s)
                if owner.replica.applied_sequence < sequence:
                    await asyncio.wait_for(owner.replica.catch_up(owner.log, sequence), wait_s)
            except (asyncio.TimeoutError, LogUnavailable, *TRANSIENT_ERRORS):
                return False
            if owner.replica.applied_sequence < sequence:
                return False
            if started_s is not None:
                self._synced_from_s[partition] = started_s
        return True

    async def read_synced(self, wait_s: float) -> None:
        """Bring every partition this node does not own up to its log's end: a call then reads
        (and routes by) copies holding every commit acknowledged before it began."""
        await asyncio.gather(*(self.caught_up(owner.partition, None, wait_s) for owner in self.owners
                               if not owner.serving()))

    async def synced_for(self, customer, reads: bool, wait_s: float) -> None:
        """Before a call naming one customer: a read brings its partition's copy to the log's end; a
        write needs nothing (the owner commits it). Either brings every copy to its end when the
        directory does not place the customer yet (created through another node), and a read does
        when the copy does not hold it (it moved to another partition since, or does not exist)."""
        partition = self.ledger.directory.lookup(customer.kind, customer.value)
        if partition is None:
            await self.read_synced(wait_s)
            return
        if not reads:
            return
        if not self.owners[partition].serving():
            await self.caught_up(partition, None, wait_s)
        if self.ledger.parts[partition].account(customer, self.clock.now_ms()).code != Code.OK:
            await self.read_synced(wait_s)

    def start(self, process_events) -> None:
        """Run each partition's loop, the reports and each partition's JetStream events consumer
        (committing through `process_events`) until `close`: through the drain too, so the leases are renewed
        while the calls in flight are committed."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.run(partition)) for partition in range(self.partitions)]
        self._tasks += [loop.create_task(consume_events(self, process_events, partition))
                        for partition in range(self.partitions)]  # each partition's subject, by its owner
        self._tasks += [loop.create_task(self.report_periodically()),
                        loop.create_task(self.snapshot_periodically())]
        for task in self._tasks[:self.partitions]:  # the partitions' loops (snapshots may be off: that one ends)
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        """The loops run until `close`. One that ended before (a cancellation from a library, a
        BaseException) would leave the node silently neither following nor serving: say it, and
        stop claiming owners, so health says NOT_SERVING instead of forwarding to stale ones."""
        if self._stop.is_set():
            return
        self.owner_addresses = [None] * self.partitions
        error = "cancelled" if task.cancelled() else repr(task.exception())
        log.error("cluster loop ended before the node closed; restart the node",
                  extra={"fields": {"task": task.get_coro().__qualname__, "error": error}})

    def closing(self) -> bool:
        return self._stop.is_set()

    def stop_reading_events(self) -> None:
        """The drain: read no more JetStream events; those read are committed and acked."""
        self._events_stopped = True

    def reading_events(self) -> bool:
        return not self._events_stopped and not self._stop.is_set()

    async def run(self, partition: int = 0) -> None:
        """Own, renew, follow or take over the partition until `close`."""
        owner = self.owners[partition]
        while not self._stop.is_set():
            try:
                if owner.serving():
                    await self._renew(owner)
                else:
                    await self._follow_or_take(owner)
            except (LogUnavailable, StaleWriter, NotOwner, *TRANSIENT_ERRORS) as error:
                event(log, "cluster step failed; retrying", partition=partition,
                      error=f"{type(error).__name__}: {error}")
                await self._pause(LEASE_LOOK_INTERVAL_S)
            except ReplicaDiverged:
                log.exception("this replica cannot apply the partition's log; it serves nothing")
                self.owner_addresses[partition] = None
                await self._stop.wait()
            except Exception:  # a bug: say it, and keep the partition's loop going
                log.exception("cluster step failed")
                await self._pause(LEASE_LOOK_INTERVAL_S)

    async def _renew(self, owner: PartitionOwner) -> None:
        partition = owner.partition
        self.owner_addresses[partition], self.holders[partition] = None, self.node_id
        await self._pause(owner.lease.timing.renew_interval_ms / 1000)
        if self._stop.is_set():
            return
        if not await owner.lease.renew() and not owner.serving():
            event(log, "partition lost", partition=partition, node=self.node_id)
        elif self._should_give_up(partition):
            self._gave_up_s, self._gave_up_partition = time.monotonic(), partition
            self._imbalanced_since_s = None
            self._free_since_s[partition] = self._gave_up_s
            await owner.give_up()
            self.holders[partition] = None
            event(log, "partition given up", partition=partition, node=self.node_id,
                  reason="balancing: a live node holds fewer")

    async def _follow_or_take(self, owner: PartitionOwner) -> None:
        partition = owner.partition
        holder = await lease_holder(self.kv, partition)
        mine = holder is not None and (holder[0].node_id, holder[0].address) == (self.node_id, self.settings.advertise)
        if holder is None or mine:  # free, or this node's own entry (its hold ran out while NATS was away)
            self.owner_addresses[partition], self.holders[partition] = None, None
            started_s = time.monotonic()
            if (mine or self._may_take(partition)) and await owner.acquire():
                self._free_since_s[partition] = None
                self.holders[partition] = self.node_id
                event(log, "partition taken", partition=partition, node=self.node_id,
                      token=owner.lease.token, applied_sequence=owner.replica.applied_sequence,
                      took_ms=int((time.monotonic() - started_s) * 1000))
                return
        else:
            self._free_since_s[partition] = None
            self.owner_addresses[partition], self.holders[partition] = holder[0].address, holder[0].node_id
        await owner.replica.catch_up(owner.log)
        await self._pause(LEASE_LOOK_INTERVAL_S if holder is None else FOLLOW_IDLE_S)

    # -- Placement: the leases spread over the live nodes ------------------------------------------

    def share(self) -> int:
        """The most partitions this node takes while they are free: ceil(P / live nodes)."""
        return math.ceil(self.partitions / max(1, len(self._live_nodes)))

    def _may_take(self, partition: int) -> bool:
        """A free lease is taken by a node under its share at once, by any node once it stayed free
        FREE_LEASE_GRACE_S (no node under its share took it: every partition keeps an owner)."""
        now_s = time.monotonic()
        if self._free_since_s[partition] is None:
            self._free_since_s[partition] = now_s
        if now_s - self._free_since_s[partition] >= FREE_LEASE_GRACE_S:
            return True
        # Not the lease this node just gave up: it is left to the node that holds fewer.
        return len(self.owned()) < self.share() and partition != self._gave_up_partition

    def _should_give_up(self, partition: int) -> bool:
        """Give up `partition`, this node's highest, when a live node holds at least two fewer (one
        lease every REBALANCE_PAUSE_S, so that the taker catches up before the next moves)."""
        owned = self.owned()
        if len(owned) < 2 or partition != owned[-1] or self._stop.is_set():
            return False
        if time.monotonic() - self._gave_up_s < REBALANCE_PAUSE_S:
            return False
        counts = {node_id: 0 for node_id in self._live_nodes}
        for holder in self.holders:
            if holder in counts:
                counts[holder] += 1
        counts[self.node_id] = len(owned)
        if min(counts.values()) > len(owned) - 2:
            self._imbalanced_since_s = None
            return False
        # Seen for REBALANCE_CONFIRM_S on: not a node's moment between losing and retaking a lease.
        if self._imbalanced_since_s is None:
            self._imbalanced_since_s = time.monotonic()
        return time.monotonic() - self._imbalanced_since_s >= REBALANCE_CONFIRM_S

    def _note_live(self, reports) -> None:
        taken_ms = now_ms()
        self._live_nodes = {self.node_id} | {report.node_id for report in reports if report.connected
                                             and taken_ms - report.reported_at_ms <= NODE_LIVE_AGE_MS}

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when the node closes meanwhile."""
        await self._pause(seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def snapshot_periodically(self) -> None:
        """The owner stores a snapshot of each partition it owns every `snapshot_interval_s` (0:
        never), from which a new node starts."""
        interval_s = self.settings.snapshot_interval_s
        while interval_s > 0 and not self._stop.is_set():
            await self._pause(interval_s)
            for owner in self.owners:
                if not owner.serving() or self._stop.is_set():
                    continue
                try:  # the log is then trimmed behind it, keeping what the nodes still need
                    applied = [report.applied_sequences[owner.partition] for report in await read_reports(self._nodes_kv)
                               if len(report.applied_sequences) > owner.partition]
                    sequence, log_start = await snapshot_and_trim(self.js, owner.replica, applied)
                except (OSError, nats.js.errors.APIError, *TRANSIENT_ERRORS) as error:
                    event(log, "snapshot failed; the next one retries", partition=owner.partition,
                          error=f"{type(error).__name__}: {error}")
                    continue
                event(log, "snapshot stored", partition=owner.partition, applied_sequence=sequence,
                      log_start_sequence=log_start)

    async def report_periodically(self) -> None:
        """Write this node's applied positions every NODE_REPORT_INTERVAL_S (for `kassa cluster
        status`), and read the others' (which nodes are live, for the shares)."""
        while not self._stop.is_set():
            report = NodeReport(self.node_id, self.settings.advertise, self.owner.partition,
                                self.owner.replica.applied_sequence, self.owner.serving(), self.connected(), now_ms(),
                                tuple(self.owned()), tuple(owner.replica.applied_sequence for owner in self.owners),
                                tuple(self.catch_ups))
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await write_report(self._nodes_kv, report)
                self._note_live(await read_reports(self._nodes_kv))
            await self._pause(NODE_REPORT_INTERVAL_S)

    async def close(self) -> None:
        """After the drain: give the leases up, so other nodes take over without waiting for them to lapse."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for owner in self.owners:
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await owner.lease.release()
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self._client.close()


def _replica_ledgers(ledger, partitions: int) -> list:
    """Each partition's ledger as its replica applies to it: the one ledger; or, partitioned, each
    part with the directory entries its groups make (PlacedLedger) and shared caps in slices (SplitEscrow)."""
    if partitions == 1:
        return [ledger]
    split_budgets(ledger)
    return [PlacedLedger(part, ledger.directory, index) for index, part in enumerate(ledger.parts)]
