"""What `kassa cluster status` shows: per partition its owner, the age of its lease, the log's first
and last sequence and its latest snapshot's sequence; per node its applied log position and lag,
from the reports each node writes every NODE_REPORT_INTERVAL_S to the key-value bucket `kassa_nodes`
(a node silent for NODE_REPORT_TTL_S drops out of it).
"""

from __future__ import annotations

import datetime
import time

import msgspec
import nats
import nats.js.errors

from kassa.server.cluster.lease import lease_holder
from kassa.server.cluster.partition_log import PartitionLog
from kassa.server.cluster.snapshot import snapshot_sequence
from kassa.server.cluster.streams import LEASE_BUCKET, NODES_BUCKET, lease_key

NODE_REPORT_INTERVAL_S = 1.0  # a node writes its report this often
KV_STREAM_PREFIX = "KV_"  # JetStream keeps a bucket in the stream KV_<bucket>, a key in $KV.<bucket>.<key>


class NodeReport(msgspec.Struct, frozen=True):
    node_id: str
    address: str
    partition: int
    applied_sequence: int
    serving: bool  # holds the partition's lease and commits
    connected: bool
    reported_at_ms: int  # the node's wall clock
    owned: tuple[int, ...] = ()  # the partitions whose lease it holds
    applied_sequences: tuple[int, ...] = ()  # per partition, the log sequence its copy applied up to
    catch_ups: tuple[int, ...] = ()  # per partition, the catch-ups to its log's end run before calls, since the start


_encode = msgspec.json.Encoder().encode
_decode_report = msgspec.json.Decoder(NodeReport).decode


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def write_report(nodes_kv, report: NodeReport) -> None:
    await nodes_kv.put(report.node_id, _encode(report))


async def read_reports(nodes_kv) -> list[NodeReport]:
    try:
        keys = await nodes_kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    reports = []
    for key in sorted(keys):
        try:
            reports.append(_decode_report((await nodes_kv.get(key)).value))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            continue  # dropped out between the listing and the read
    return reports


async def lease_age_ms(js, partition: int) -> int | None:
    """Milliseconds since the lease was last written (taken or renewed), by the NATS servers' clock."""
    try:
        message = await js.get_last_msg(f"{KV_STREAM_PREFIX}{LEASE_BUCKET}",
                                        f"$KV.{LEASE_BUCKET}.{lease_key(partition)}")
    except nats.js.errors.NotFoundError:
        return None
    written = message.time
    return int((datetime.datetime.now(datetime.timezone.utc) - written).total_seconds() * 1000)


async def cluster_status(js, partitions: int) -> dict:
    """{"partitions": [...], "nodes": [...]}, JSON-ready."""
    leases = await js.key_value(LEASE_BUCKET)
    reports = await read_reports(await js.key_value(NODES_BUCKET))
    shown_partitions, ends = [], {}
    for partition in range(partitions):
        holder = await lease_holder(leases, partition)
        log = PartitionLog(js, partition)
        ends[partition] = await log.end()
        shown_partitions.append({
            "partition": partition,
            "owner": holder[0].node_id if holder else None,
            "owner_address": holder[0].address if holder else None,
            "token": holder[1] if holder else None,
            "lease_age_ms": await lease_age_ms(js, partition) if holder else None,
            "log_end_sequence": ends[partition],
            "log_first_sequence": await log.first(),  # the log is trimmed behind snapshots
            "snapshot_sequence": await snapshot_sequence(js, partition),
        })
    taken_ms = now_ms()
    nodes = [{**msgspec.structs.asdict(report), **_lags(report, ends),
              "report_age_ms": max(0, taken_ms - report.reported_at_ms)} for report in reports]
    return {"partitions": shown_partitions, "nodes": nodes}


def _lags(report: NodeReport, ends: dict[int, int]) -> dict:
    """`lag`: log sequences the node has still to apply, all partitions together; `lags`: per partition."""
    applied = dict(enumerate(report.applied_sequences)) or {report.partition: report.applied_sequence}
    lags = [max(0, end - applied.get(partition, 0)) for partition, end in sorted(ends.items())]
    return {"lag": sum(lags), "lags": lags}


STATUS_CONNECT_S_MAX = 5.0
STATUS_REQUEST_S_MAX = 2.0


async def read_cluster_status(settings) -> dict:
    """`kassa cluster status`: connect to the config's NATS servers, read, disconnect."""
    client = await nats.connect(servers=settings.nats_urls, connect_timeout=STATUS_CONNECT_S_MAX,
                                max_reconnect_attempts=1)
    try:
        return await cluster_status(client.jetstream(timeout=STATUS_REQUEST_S_MAX), settings.partitions)
    finally:
        await client.close()
