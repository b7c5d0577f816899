"""A kassa node in a cluster: the server's side of the partition layer.

`ClusterNode.connect` joins the NATS servers (creating the log stream, lease and snapshot buckets
if this is the first node) and builds one `PartitionOwner` per partition this node serves. `run`
then keeps, per partition, one loop going: while this node holds the lease it renews it; while
another node does, it applies the log as it grows (a warm follower) and remembers the owner's
address, where calls for the partition are forwarded (server/cluster/forward.py); when no one
holds it, it takes it (the owner applies the log to its end and fences it before it serves).

Today a node serves one partition (`cluster.partitions = 1`): its one ledger is the partition's
replica. Calls find their partition through `partition_of`, the one place to point at a
multi-partition placement later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time

import nats
import nats.js.errors

from kassa.server.cluster.committing import LoggedLedger
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
PARTITIONS_SERVED_MAX = 1  # partitions one node serves until ledger.partitions places more


class ClusterRefused(Exception):
    """A cluster configuration this node cannot serve: the server does not start, and says why."""


def partition_of(method: str, partitions: int) -> int:
    """The partition a call belongs to. One partition today; a placement of accounts over several
    (the ledger's partitions) decides it here from the call."""
    del method, partitions
    return 0


async def restore(js, ledger_path: str) -> bool:
    """The partition's latest snapshot as `ledger_path`'s LMDB file, whole or not at all (downloaded
    beside it, then renamed into place); False when there is none."""
    staging = ledger_path.rstrip("/") + SNAPSHOT_STAGING_SUFFIX
    shutil.rmtree(staging, ignore_errors=True)  # a download cut short by an earlier start
    if not await restore_snapshot(js, 0, staging):
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
        timing = settings.lease_timing()
        lease = PartitionLease(kv, 0, settings.node_id, settings.advertise, timing)
        self.owner = PartitionOwner(lease, PartitionLog(js, 0), Replica(ledger, 0), clock)
        self.ledger = ledger
        self.clock = clock
        self.owner_address: str | None = None  # another node's, while it holds the lease
        self._stop = asyncio.Event()
        self._events_stopped = False  # the drain: no more events are read from JetStream
        self._tasks: list[asyncio.Task] = []

    @classmethod
    async def connect(cls, settings, ledger_path: str, open_ledger, clock) -> ClusterNode:
        """Join the NATS servers, then open the ledger (`open_ledger()`): a new node's empty
        `ledger_path` first gets the partition's latest snapshot, so it applies only the log after it."""
        if settings.partitions > PARTITIONS_SERVED_MAX:
            raise ClusterRefused(f"cluster.partitions = {settings.partitions}: a node serves "
                                 f"{PARTITIONS_SERVED_MAX} partition until ledger partitions are placed")
        try:
            client = await nats.connect(servers=settings.nats_urls, connect_timeout=NATS_CONNECT_S_MAX,
                                        reconnect_time_wait=NATS_RECONNECT_WAIT_S, max_reconnect_attempts=-1,
                                        name=f"kassa-{settings.node_id}")
        except (OSError, *TRANSIENT_ERRORS) as error:
            raise ClusterRefused(f"cannot reach the NATS servers {settings.nats_urls}: {error}") from error
        js = client.jetstream(timeout=JETSTREAM_REQUEST_S_MAX)
        await ensure_streams(js, settings.replicas, settings.lease_ttl_ms)
        if not os.path.exists(os.path.join(ledger_path, LMDB_DATA_FILE)) and await restore(js, ledger_path):
            event(log, "restored the partition's snapshot", partition=0, path=ledger_path)
        ledger = open_ledger()
        return cls(settings, ledger, clock, client, js, await js.key_value(LEASE_BUCKET),
                   await js.key_value(NODES_BUCKET))

    def logged_ledger(self) -> LoggedLedger:
        """What the GroupCommitter commits through: the log first, then the local ledger."""
        return LoggedLedger(self.owner, asyncio.get_running_loop())

    def connected(self) -> bool:
        return self._client.is_connected

    def serves_here(self) -> bool:
        return self.owner.serving()

    def can_serve(self) -> bool:
        """Health: connected, the partition's loop running, and the partition has an owner (this node
        or one it forwards to)."""
        running = bool(self._tasks) and not self._tasks[0].done()
        return self.connected() and running and (self.serves_here() or self.owner_address is not None)

    def start(self, process_events) -> None:
        """Run the partition's loop, the reports and the JetStream events consumer (committing
        through `process_events`) until `close`: through the drain too, so the lease is renewed
        while the calls in flight are committed."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.run()), loop.create_task(self.report_periodically()),
                       loop.create_task(consume_events(self, process_events)),
                       loop.create_task(self.snapshot_periodically())]
        for task in self._tasks:
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        """The loops run until `close`. One that ended before (a cancellation from a library, a
        BaseException) would leave the node silently neither following nor serving: say it, and
        stop claiming an owner, so health says NOT_SERVING instead of forwarding to a stale one."""
        if self._stop.is_set():
            return
        self.owner_address = None
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

    async def run(self) -> None:
        """Own, renew, follow or take over the partition until `close`."""
        while not self._stop.is_set():
            try:
                if self.owner.serving():
                    await self._renew()
                else:
                    await self._follow_or_take()
            except (LogUnavailable, StaleWriter, NotOwner, *TRANSIENT_ERRORS) as error:
                event(log, "cluster step failed; retrying", error=f"{type(error).__name__}: {error}")
                await self._pause(LEASE_LOOK_INTERVAL_S)
            except ReplicaDiverged:
                log.exception("this replica cannot apply the partition's log; it serves nothing")
                self.owner_address = None
                await self._stop.wait()
            except Exception:  # a bug: say it, and keep the partition's loop going
                log.exception("cluster step failed")
                await self._pause(LEASE_LOOK_INTERVAL_S)

    async def _renew(self) -> None:
        self.owner_address = None
        await self._pause(self.owner.lease.timing.renew_interval_ms / 1000)
        if self._stop.is_set():
            return
        if not await self.owner.lease.renew() and not self.owner.serving():
            event(log, "partition lost", partition=self.owner.partition, node=self.node_id)

    async def _follow_or_take(self) -> None:
        holder = await lease_holder(self.kv, self.owner.partition)
        mine = holder is not None and (holder[0].node_id, holder[0].address) == (self.node_id, self.settings.advertise)
        if holder is None or mine:  # free, or this node's own entry (its hold ran out while NATS was away)
            self.owner_address = None
            started_s = time.monotonic()
            if await self.owner.acquire():
                event(log, "partition taken", partition=self.owner.partition, node=self.node_id,
                      token=self.owner.lease.token, applied_sequence=self.owner.replica.applied_sequence,
                      took_ms=int((time.monotonic() - started_s) * 1000))
                return
        else:
            self.owner_address = holder[0].address
        await self.owner.replica.catch_up(self.owner.log)
        await self._pause(LEASE_LOOK_INTERVAL_S if holder is None else FOLLOW_IDLE_S)

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when the node closes meanwhile."""
        await self._pause(seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def snapshot_periodically(self) -> None:
        """The owner stores a snapshot of its partition every `snapshot_interval_s` (0: never), from
        which a new node starts."""
        interval_s = self.settings.snapshot_interval_s
        while interval_s > 0 and not self._stop.is_set():
            await self._pause(interval_s)
            if not self.owner.serving() or self._stop.is_set():
                continue
            try:  # the log is then trimmed behind it, keeping what the nodes still need
                applied = [report.applied_sequence for report in await read_reports(self._nodes_kv)
                           if report.partition == self.owner.partition]
                sequence, log_start = await snapshot_and_trim(self.js, self.owner.replica, applied)
            except (OSError, nats.js.errors.APIError, *TRANSIENT_ERRORS) as error:
                event(log, "snapshot failed; the next one retries", error=f"{type(error).__name__}: {error}")
                continue
            event(log, "snapshot stored", partition=self.owner.partition, applied_sequence=sequence,
                  log_start_sequence=log_start)

    async def report_periodically(self) -> None:
        """Write this node's applied position every NODE_REPORT_INTERVAL_S, for `kassa cluster status`."""
        while not self._stop.is_set():
            report = NodeReport(self.node_id, self.settings.advertise, self.owner.partition,
                                self.owner.replica.applied_sequence, self.owner.serving(), self.connected(), now_ms())
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await write_report(self._nodes_kv, report)
            await self._pause(NODE_REPORT_INTERVAL_S)

    async def close(self) -> None:
        """After the drain: give the lease up, so another node takes over without waiting for it to lapse."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self.owner.lease.release()
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self._client.close()
