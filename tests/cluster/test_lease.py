"""Partition leases in a real JetStream key-value bucket (one nats-server): taken by compare-and-set,
renewed, lost when they lapse, taken over by another node with a larger fencing token."""

from __future__ import annotations

import asyncio
import time

import pytest

from kassa.server.cluster.lease import PartitionLease, lease_holder
from kassa.server.cluster.lease_timing import LeaseTiming
from tests.cluster.support import jetstream

TIMING = LeaseTiming(ttl_ms=1_000, renew_interval_ms=300, margin_ms=200)
LAPSE_WAIT_S_MAX = 5.0  # the servers expire an entry some time after its TTL: poll up to this long
POLL_S = 0.1
PARTITION = 7


def leases(kv, *nodes):
    return [PartitionLease(kv, PARTITION, node, f"127.0.0.1:{5000 + index}", TIMING)
            for index, node in enumerate(nodes)]


async def take_within(lease: PartitionLease, wait_s: float) -> float:
    """Seconds until `lease.take()` succeeded; raises if it did not within `wait_s`."""
    started = time.monotonic()
    while not await lease.take():
        if time.monotonic() - started > wait_s:
            raise AssertionError(f"{lease.node_id} could not take the lapsed lease within {wait_s} s")
        await asyncio.sleep(POLL_S)
    return time.monotonic() - started


class TestTake:
    def test_one_node_takes_a_free_lease_and_another_is_refused(self, nats_one):
        async def scenario():
            async with jetstream(nats_one, 1, TIMING.ttl_ms) as (_, _, kv):
                first, second = leases(kv, "node-a", "node-b")
                assert await first.take() is True
                assert await second.take() is False
                assert first.held() is True
                assert second.held() is False
                record, token = await lease_holder(kv, PARTITION)
                assert record.node_id == "node-a"
                assert token == first.token

        asyncio.run(scenario())

    def test_timing_that_loses_the_lease_between_renewals_is_refused(self):
        with pytest.raises(ValueError, match="cluster.lease_renew_interval_ms"):
            LeaseTiming(ttl_ms=1_000, renew_interval_ms=900, margin_ms=200)


class TestRenew:
    def test_renewals_keep_the_lease_past_its_ttl_and_keep_its_token(self, nats_one):
        async def scenario():
            async with jetstream(nats_one, 1, TIMING.ttl_ms) as (_, _, kv):
                holder, rival = leases(kv, "node-a", "node-b")
                assert await holder.take()
                token = holder.token
                for _ in range(2 * TIMING.ttl_ms // TIMING.renew_interval_ms):  # two TTLs of renewals
                    await asyncio.sleep(TIMING.renew_interval_ms / 1000)
                    assert await holder.renew() is True
                    assert await rival.take() is False
                assert holder.token == token
                assert holder.held() is True

        asyncio.run(scenario())


class TestLapse:
    def test_a_lease_not_renewed_lapses_and_is_taken_over_with_a_larger_token(self, nats_one):
        async def scenario():
            async with jetstream(nats_one, 1, TIMING.ttl_ms) as (_, _, kv):
                old, new = leases(kv, "node-a", "node-b")
                assert await old.take()
                waited_s = await take_within(new, LAPSE_WAIT_S_MAX)
                assert waited_s >= (TIMING.ttl_ms - TIMING.margin_ms) / 1000  # not before the TTL
                assert old.held() is False  # its own clock told it to stop first
                assert new.token > old.token
                assert await old.renew() is False  # the entry is no longer the one it wrote
                assert old.token is None
                record, token = await lease_holder(kv, PARTITION)
                assert record.node_id == "node-b"
                assert token == new.token

        asyncio.run(scenario())

    def test_a_holder_whose_hold_ran_out_takes_its_own_entry_back_under_a_new_token(self, nats_one):
        """As after the servers could not be reached for longer than the hold: no one took it."""
        async def scenario():
            async with jetstream(nats_one, 1, TIMING.ttl_ms) as (_, _, kv):
                now_s = [0.0]
                holder = PartitionLease(kv, PARTITION, "node-a", "a:50051", TIMING, monotonic=lambda: now_s[0])
                (rival,) = leases(kv, "node-b")
                assert await holder.take()
                old_token = holder.token
                now_s[0] += TIMING.ttl_ms / 1000  # its own clock says the hold ran out
                assert holder.held() is False
                assert await holder.take() is True
                assert holder.token > old_token
                assert await rival.take() is False

        asyncio.run(scenario())

    def test_a_released_lease_is_taken_at_once(self, nats_one):
        async def scenario():
            async with jetstream(nats_one, 1, TIMING.ttl_ms) as (_, _, kv):
                old, new = leases(kv, "node-a", "node-b")
                assert await old.take()
                await old.release()
                assert await new.take() is True
                assert old.held() is False

        asyncio.run(scenario())
