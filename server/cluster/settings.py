"""The `[cluster]` section of the config, typed once. Absent, or without `nats_urls`: kassa is the
single node it is today and nothing under server/cluster runs. (server/config.py takes it in as
`cluster: ClusterSection`; its rows are in docs/configuration.md.)"""

from __future__ import annotations

import re

import msgspec

from kassa.core_ext.limits import PARTITIONS_MAX  # a cluster's partitions are its ledgers' (a lease and a log each)
from kassa.server.cluster.lease_timing import LEASE_MARGIN_MS, LEASE_RENEW_INTERVAL_MS, LEASE_TTL_MS, LeaseTiming

REPLICAS_ALLOWED = (1, 3, 5)  # JetStream's replica counts that keep a majority (R1: tests and one machine)
SNAPSHOT_INTERVAL_S_MAX = 7 * 86_400  # a week
NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ClusterSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    node_id: str = ""  # this node's name in leases and `kassa cluster status`; unique in the cluster
    advertise: str = ""  # host:port where other nodes reach this node's gRPC server (forwarded calls)
    nats_urls: list[str] = []  # the NATS servers, e.g. ["nats://10.0.0.1:4222"]; empty: a single node
    partitions: int = 1  # fixed for the cluster's life: every node must say the same
    replicas: int = 3  # copies of each partition's log, lease and snapshots in JetStream
    lease_ttl_ms: int = LEASE_TTL_MS
    lease_renew_interval_ms: int = LEASE_RENEW_INTERVAL_MS
    lease_margin_ms: int = LEASE_MARGIN_MS
    snapshot_interval_s: float = 300  # the owner stores a snapshot of its partition this often; 0: never
    # The secret nodes present to each other's internal Partitions/Commit (the same on every node);
    # required with partitions > 1 when auth is enabled. Empty: the method is open (no auth).
    internal_key: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.nats_urls)

    def __post_init__(self):
        if not self.enabled:
            if self.node_id or self.advertise:
                raise ValueError("cluster.nats_urls is empty: name at least one NATS server, or leave "
                                 "[cluster] out for a single node")
            return
        if not NODE_ID_PATTERN.match(self.node_id):
            raise ValueError(f"cluster.node_id {self.node_id!r}: 1-64 of A-Z, a-z, 0-9, '_', '-'")
        host, colon, port = self.advertise.rpartition(":")
        if not host or not colon or not port.isdigit():
            raise ValueError(f"cluster.advertise {self.advertise!r}: expected host:port, where the other nodes "
                             "reach this node's gRPC server")
        if not 0 <= self.snapshot_interval_s <= SNAPSHOT_INTERVAL_S_MAX:
            raise ValueError(f"cluster.snapshot_interval_s {self.snapshot_interval_s}: must be 0 (never) to "
                             f"{SNAPSHOT_INTERVAL_S_MAX}")
        if not 1 <= self.partitions <= PARTITIONS_MAX:
            raise ValueError(f"cluster.partitions {self.partitions}: must be 1 to {PARTITIONS_MAX}")
        if self.replicas not in REPLICAS_ALLOWED:
            raise ValueError(f"cluster.replicas {self.replicas}: must be one of {REPLICAS_ALLOWED}")
        self.lease_timing()  # refuses a renewal interval that would lose the lease

    def lease_timing(self) -> LeaseTiming:
        return LeaseTiming(ttl_ms=self.lease_ttl_ms, renew_interval_ms=self.lease_renew_interval_ms,
                           margin_ms=self.lease_margin_ms)
