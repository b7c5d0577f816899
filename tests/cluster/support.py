"""What the cluster tests share: a client on a NATS cluster, ledgers, and operations to log."""

from __future__ import annotations

import contextlib

import nats

from kassa.core_ext import Ledger, Program
from kassa.core_ext.model import AccrueOp, AdjustOp, CreateAccountOp, Customer, IdKind, Line, Receipt
from kassa.server.cluster.streams import LEASE_BUCKET, ensure_streams
from tests.core.programs import program

T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z
MAP_SIZE_BYTES = 32 * 1024**2
HOLD_TTL_S = 900
CONNECT_S_MAX = 2.0
REQUEST_S_MAX = 2.0  # the client's default JetStream request time
CAMPAIGNS = """
[[campaigns]]
id = "base"
when = {}
effect = { kind = "earn_percent", percent_bps = 500 }

[[campaigns]]
id = "spring"
promo_code = true
when = {}
effect = { kind = "earn_percent", percent_bps = 100 }
"""


@contextlib.asynccontextmanager
async def jetstream(cluster, replicas: int, lease_ttl_ms: int = 3_000):
    """(client, JetStream context, lease bucket) on `cluster`, with the cluster's streams created."""
    client = await nats.connect(servers=cluster.urls, connect_timeout=CONNECT_S_MAX, reconnect_time_wait=0.1,
                                max_reconnect_attempts=-1)
    try:
        js = client.jetstream(timeout=REQUEST_S_MAX)
        await ensure_streams(js, replicas, lease_ttl_ms)
        yield client, js, await js.key_value(LEASE_BUCKET)
    finally:
        await client.close()


def open_ledger(path) -> Ledger:
    return Ledger(str(path), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)


def customer(account: str) -> Customer:
    return Customer(IdKind.ACCOUNT, account)


def purchase(account: str, number: int, amount_minor: int = 10_000) -> AccrueOp:
    line = Line(1, "SKU-1", "grocery/dairy/milk", 1000, amount_minor, amount_minor)
    receipt = Receipt("store-1", "t1", f"r-{account}-{number}", (line,))
    return AccrueOp(f"buy-{account}-{number}", f"d:{account}:{number}".encode(), customer(account), receipt)


def opening(account: str) -> list:
    return [CreateAccountOp(f"create-{account}", f"d:create:{account}".encode(), account),
            AdjustOp(f"adjust-{account}", f"d:adjust:{account}".encode(), customer(account), 500, "welcome", "op-1")]
