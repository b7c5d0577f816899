"""The JetStream objects the cluster uses, their names, and their creation.

One stream holds every partition's log, one subject per partition (`kassa.log.<partition>`), so
the expected-last-subject-sequence check fences each partition on its own. Leases live in a
key-value bucket whose entries expire after the lease time unless renewed: the servers' clock, not
the nodes', decides when a lease has lapsed. Snapshots go to an object store bucket; each node
reports its applied log position to a second key-value bucket (`kassa cluster status` reads it); a
third holds the escrow bank of shared counters (server/cluster/escrow_bank.py).
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.api as api
import nats.js.errors

LOG_STREAM = "KASSA_LOG"
LOG_SUBJECT_PREFIX = "kassa.log"
EVENTS_STREAM = "KASSA_EVENTS"  # billing events published straight to JetStream (server/cluster/events.py)
EVENTS_SUBJECT_PREFIX = "kassa.events"
EVENTS_DUPLICATE_WINDOW_S = 120  # a second publish of an event id within this long is dropped by the stream
LEASE_BUCKET = "kassa_leases"
SNAPSHOT_BUCKET = "kassa_snapshots"
# A snapshot's header: the partition's log may be purged before this sequence (server/cluster/snapshot.py).
LOG_START_HEADER = "Kassa-Log-Start"
NODES_BUCKET = "kassa_nodes"  # each node's last report (server/cluster/status.py)
ESCROW_BUCKET = "kassa_escrow"  # the bank of shared counters' units, one entry a counter (server/cluster/escrow_bank.py)
NODE_REPORT_TTL_S = 60  # a node that has not reported for this long drops out of `kassa cluster status`
# A retried publish with the same message id within this window is answered with the first one's
# acknowledgement instead of being stored twice (JetStream's deduplication window).
LOG_DUPLICATE_WINDOW_S = 120
# nats-server's default max_payload: the largest commit group one message carries.
GROUP_BYTES_MAX = 1024 * 1024
STREAM_IN_USE_ERR_CODE = 10058  # JSStreamNameExistErr: the stream exists with another configuration
# What a request may meet while a NATS server is lost or a stream's leader is being elected: it is
# retried (or, for a lease, counted as "not now") rather than taken for an answer.
TRANSIENT_ERRORS = (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
                    nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError,
                    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError)


def log_subject(partition: int) -> str:
    return f"{LOG_SUBJECT_PREFIX}.{partition}"


def events_subject(partition: int) -> str:
    return f"{EVENTS_SUBJECT_PREFIX}.{partition}"


def lease_key(partition: int) -> str:
    return f"partition-{partition}"


def snapshot_name(partition: int) -> str:
    return f"partition-{partition}"


async def _add_or_update_stream(js, config) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as error:
        if error.err_code != STREAM_IN_USE_ERR_CODE:
            raise
        await js.update_stream(config)


async def ensure_streams(js, replicas: int, lease_ttl_ms: int) -> None:
    """Create (or bring to this configuration) the log stream, the lease bucket and the snapshot
    bucket, each with `replicas` copies. Idempotent: every node runs it at start."""
    log_config = api.StreamConfig(
        name=LOG_STREAM,
        subjects=[f"{LOG_SUBJECT_PREFIX}.*"],
        num_replicas=replicas,
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        duplicate_window=LOG_DUPLICATE_WINDOW_S,
        max_msg_size=GROUP_BYTES_MAX,
    )
    events_config = api.StreamConfig(
        name=EVENTS_STREAM,
        subjects=[f"{EVENTS_SUBJECT_PREFIX}.*"],
        num_replicas=replicas,
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        duplicate_window=EVENTS_DUPLICATE_WINDOW_S,
        max_msg_size=GROUP_BYTES_MAX,
    )
    for config in (log_config, events_config):
        await _add_or_update_stream(js, config)
    await js.create_key_value(bucket=LEASE_BUCKET, history=1, ttl=lease_ttl_ms / 1000, replicas=replicas,
                              storage=api.StorageType.FILE)
    await js.create_object_store(SNAPSHOT_BUCKET, replicas=replicas, storage=api.StorageType.FILE)
    await js.create_key_value(bucket=NODES_BUCKET, history=1, ttl=NODE_REPORT_TTL_S, replicas=replicas,
                              storage=api.StorageType.FILE)
    await js.create_key_value(bucket=ESCROW_BUCKET, history=1, replicas=replicas, storage=api.StorageType.FILE)
