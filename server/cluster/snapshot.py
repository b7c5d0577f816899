"""Snapshots of a partition in the JetStream object store (bucket `kassa_snapshots`, one object per
partition, the latest replacing the one before).

A snapshot is a compacted copy of the partition's LMDB environment taken in one read transaction,
so the applied log sequence stored in it (replica.APPLIED_SEQUENCE_KEY in `meta`) is exactly the log position the copy
reflects. A new replica restores the copy, opens it as its ledger and applies the log after that
sequence. The sequence is also an object header, for whoever trims the log behind snapshots
without downloading one.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import nats.js.errors
from nats.js.api import ObjectMeta

from kassa.server.cluster.replica import stored_sequence
from kassa.server.cluster.streams import SNAPSHOT_BUCKET, snapshot_name

LMDB_DATA_FILE = "data.mdb"
SEQUENCE_HEADER = "Kassa-Log-Sequence"


def _copy_environment(ledger, directory: str) -> int:
    """In a worker thread: a compacted copy of the ledger's environment into `directory`; returns the
    applied log sequence the copy holds."""
    with ledger.env.begin() as txn:  # through the ledger's resize gate
        sequence = stored_sequence(ledger, txn)
        ledger.env.env.copy(directory, compact=True, txn=txn)
    return sequence


async def save_snapshot(js, replica) -> int:
    """Store a snapshot of `replica`'s partition; returns the log sequence it is at."""
    store = await js.object_store(SNAPSHOT_BUCKET)
    with tempfile.TemporaryDirectory(prefix="kassa-snapshot-") as directory:
        sequence = await asyncio.to_thread(_copy_environment, replica.ledger, directory)
        meta = ObjectMeta(description=f"partition {replica.partition} at log sequence {sequence}",
                          headers={SEQUENCE_HEADER: [str(sequence)]})
        with open(os.path.join(directory, LMDB_DATA_FILE), "rb") as data:
            await store.put(snapshot_name(replica.partition), data, meta=meta)
    return sequence


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
