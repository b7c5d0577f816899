"""Billing events published straight to JetStream (`kassa.events.0`): the owner commits each once,
across an owner kill -9'd while events were in flight; a duplicate publish is dropped by the
stream, a duplicate event under another message id is replayed by its request id."""

from __future__ import annotations

import asyncio
import threading
import time

import nats
from nats.js.api import Header

from kassa.server.cluster.events import consumer_name
from kassa.server.cluster.streams import EVENTS_STREAM, events_subject
from tests.cluster.conftest import NATS_BINARY
from tests.cluster.kassa_cluster import KassaNodes, open_accounts, statement_request_ids
from tests.cluster.nats_cluster import NatsCluster
from tests.server.stream_helpers import purchase_event

LEASE_TTL_MS = 1_500
ACCOUNTS = ["E1", "E2", "E3"]
EVENTS = 1_500
RECORDED_BEFORE_KILL = 100  # the owner is killed once it recorded this many, while more come in
PUBLISH_BATCH = 100
PUBLISH_PAUSE_S = 0.02  # between batches: the owner is busy committing when it is killed
RECORDED_WAIT_S_MAX = 20.0  # the events the dead owner took and never acked come back after ack_wait
RETRY_S_MAX = 10.0
POLL_S = 0.2
PRICE_MINOR = 4_000


def event_id(number: int) -> str:
    return f"bill-{number:05d}"


async def publish(urls: list[str], numbers, message_id=lambda number: event_id(number)) -> None:
    client = await nats.connect(servers=urls)
    try:
        js = client.jetstream(timeout=5)
        for number in numbers:
            event = purchase_event(event_id(number), ACCOUNTS[number % len(ACCOUNTS)], PRICE_MINOR)
            await js.publish(events_subject(0), event.SerializeToString(), stream=EVENTS_STREAM,
                             headers={Header.MSG_ID: message_id(number)})
            if number % PUBLISH_BATCH == PUBLISH_BATCH - 1:
                await asyncio.sleep(PUBLISH_PAUSE_S)
    finally:
        await client.close()


async def unacked_events(urls: list[str]) -> int:
    client = await nats.connect(servers=urls)
    try:
        info = await client.jetstream(timeout=5).consumer_info(EVENTS_STREAM, consumer_name(0))
        return info.num_pending + info.num_ack_pending
    finally:
        await client.close()


def recorded(node) -> list[str]:
    return [request_id for account in ACCOUNTS for request_id in statement_request_ids(node, account)]


class TestJetStreamEvents:
    def test_each_event_takes_effect_once_across_an_owner_change(self, tmp_path):
        servers = NatsCluster(NATS_BINARY, tmp_path / "nats", 1)
        servers.start()
        nodes = KassaNodes(tmp_path, servers.urls, 2, LEASE_TTL_MS, replicas=1)
        try:
            nodes.start()
            open_accounts(nodes, ACCOUNTS, RETRY_S_MAX)
            publisher = threading.Thread(target=asyncio.run, args=(publish(servers.urls, range(EVENTS)),))
            publisher.start()
            owner = nodes.owner()
            deadline_s = time.monotonic() + RECORDED_WAIT_S_MAX
            while len(recorded(owner)) < RECORDED_BEFORE_KILL:
                assert time.monotonic() < deadline_s, "the owner records no events"
                time.sleep(POLL_S / 4)
            owner.kill9()  # with events still being published, some delivered to it and not acked
            assert publisher.is_alive(), "every event was published before the kill: publish more or slower"
            publisher.join()
            survivor = next(node for node in nodes.nodes if node is not owner)
            asyncio.run(publish(servers.urls, range(10)))  # the same message ids: dropped by the stream
            # The same events under other message ids reach the consumer: their request ids replay them.
            asyncio.run(publish(servers.urls, range(10), message_id=lambda number: f"again-{number}"))
            expected = {event_id(number) for number in range(EVENTS)}
            deadline_s = time.monotonic() + RECORDED_WAIT_S_MAX
            while True:
                found = recorded(survivor) if nodes.owner() is not None else []
                if set(found) == expected and asyncio.run(unacked_events(servers.urls)) == 0:
                    break
                assert time.monotonic() < deadline_s, f"{len(set(found))} of {len(expected)} events recorded"
                time.sleep(POLL_S)
            assert sorted(found) == sorted(expected)  # each once: none lost, none twice
        finally:
            nodes.stop()
            servers.stop()
