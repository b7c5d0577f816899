"""Snapshots of a partition in the JetStream object store (bucket `kassa_snapshots`, one object per
partition, the latest replacing the one before).

A snapshot is a compacted copy of the partition's LMDB environment taken in one read transaction,
so the applied log sequence stored in it (replica.APPLIED_SEQUENCE_KEY in `meta`) is exactly the log position the copy
reflects. A new replica restores the copy, opens it as its ledger and applies the log after that
sequence. The sequence is also an object header, for whoever trims the log behind snapshots
without downloading one.

Trimming (`snapshot_and_trim`): once a snapshot is stored, the owner purges the partition's subject
of the log before the *log start*: the oldest position any node may still need, the older of
- the previous snapshot's sequence (the margin: a node that downloaded the previous snapshot while
  this one was taken still finds the log after it; one snapshot interval of groups is kept), and
- the lowest applied sequence any node reported for the partition within NODE_REPORT_TTL_S (a
  follower that is behind, or restarting, still finds the groups it has not applied),
and never past the snapshot's own group: the subject's last group stays, which the log's fence
(the expected last sequence per subject) checks the next append against.
The log start goes into the new snapshot's headers before anything is purged: a replica that has not
applied the groups before it (a node away longer than NODE_REPORT_TTL_S) cannot follow the log and
says so (partition_log.LogTrimmed); emptying its ledger directory makes it start from the snapshot.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import nats.js.errors
from nats.js.api import ObjectMeta

from kassa.server.cluster.replica import stored_sequence
from kassa.server.cluster.streams import LOG_START_HEADER, LOG_STREAM, SNAPSHOT_BUCKET, log_subject, snapshot_name

LMDB_DATA_FILE = "data.mdb"
SEQUENCE_HEADER = "Kassa-Log-Sequence"


def _copy_environment(ledger, directory: str) -> int:
    """In a worker thread: a compacted copy of the ledger's environment into `directory`; returns the
    applied log sequence the copy holds."""
    with ledger.env.begin() as txn:  # through the ledger's resize gate
        sequence = stored_sequence(ledger, txn)
        ledger.env.env.copy(directory, compact=True, txn=txn)
    return sequence


async def save_snapshot(js, replica, log_start=lambda sequence: 0) -> int:
    """Store a snapshot of `replica`'s partition; returns the log sequence it is at. Its headers
    carry that sequence and `log_start(sequence)`: the groups before it may be purged from the log."""
    store = await js.object_store(SNAPSHOT_BUCKET)
    with tempfile.TemporaryDirectory(prefix="kassa-snapshot-") as directory:
        sequence = await asyncio.to_thread(_copy_environment, replica.ledger, directory)
        meta = ObjectMeta(description=f"partition {replica.partition} at log sequence {sequence}",
                          headers={SEQUENCE_HEADER: [str(sequence)], LOG_START_HEADER: [str(log_start(sequence))]})
        with open(os.path.join(directory, LMDB_DATA_FILE), "rb") as data:
            await store.put(snapshot_name(replica.partition), data, meta=meta)
    return sequence


async def snapshot_and_trim(js, replica, applied: list[int]) -> tuple[int, int]:
    """Store a snapshot of `replica`'s partition, then purge the log before the oldest position a
    node may still need (see the module's docstring; `applied`: the applied sequences the nodes
    reported for the partition). (snapshot sequence, log start); a log start of 0 purges nothing
    (the partition's first snapshot)."""
    previous = await snapshot_sequence(js, replica.partition)

    def log_start(sequence: int) -> int:
        if previous is None:
            return 0
        # Never past the group at `sequence`: the log's fence (the expected last sequence of the
        # partition's subject) needs the subject's last group, and it is this one or a later one.
        return min(min(previous, *applied) + 1, sequence)

    sequence = await save_snapshot(js, replica, log_start)
    start = log_start(sequence)
    if start > 1:
        await js.purge_stream(LOG_STREAM, subject=log_subject(replica.partition), seq=start)
    return sequence, start


async def snapshot_sequence(js, partition: int) -> int | None:
    """The log sequence of the partition's latest snapshot, or None when it has none."""
    store = await js.object_store(SNAPSHOT_BUCKET)
    try:
        info = await store.get_info(snapshot_name(partition))
    except nats.js.errors.ObjectNotFoundError:
        return None
    return int(info.headers[SEQUENCE_HEADER][0])


async def restore_snapshot(js, partition: int, directory) -> bool:
    """Write the partition's latest snapshot as the LMDB environment in `directory` (which must hold
    none yet); False when the partition has no snapshot."""
    store = await js.object_store(SNAPSHOT_BUCKET)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LMDB_DATA_FILE)
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists: a snapshot is restored into an empty directory only")
    try:
        with open(path, "wb") as data:
            await store.get(snapshot_name(partition), writeinto=data)
    except nats.js.errors.ObjectNotFoundError:
        os.remove(path)
        return False
    return True
