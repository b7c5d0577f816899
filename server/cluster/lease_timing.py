"""A lease's timing, checked once: the `[cluster]` config reads it without importing NATS (a single
node starts without nats-py's ~60 ms of imports); server/cluster/lease.py holds the lease itself."""

from __future__ import annotations

import msgspec

LEASE_TTL_MS = 3_000  # an unrenewed lease lapses this long after its last renewal
LEASE_RENEW_INTERVAL_MS = 1_000  # the holder renews this often
LEASE_MARGIN_MS = 500  # the holder stops counting on its lease this long before it can lapse


class LeaseTiming(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ttl_ms: int = LEASE_TTL_MS
    renew_interval_ms: int = LEASE_RENEW_INTERVAL_MS
    margin_ms: int = LEASE_MARGIN_MS

    def __post_init__(self):
        if self.margin_ms <= 0:
            raise ValueError(f"cluster.lease_margin_ms must be > 0, got {self.margin_ms}")
        if self.renew_interval_ms + self.margin_ms >= self.ttl_ms:
            raise ValueError(
                f"cluster.lease_renew_interval_ms ({self.renew_interval_ms}) + cluster.lease_margin_ms "
                f"({self.margin_ms}) must be below cluster.lease_ttl_ms ({self.ttl_ms}): a holder would lose "
                "its lease between two renewals"
            )
