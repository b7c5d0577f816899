"""Billing events published straight to JetStream: the owner consumes them, commits, then acks.

A billing system publishes each event (a `kassa.v1.Event`, as in StreamEvents) to the subject
`kassa.events.<n>` of the stream KASSA_EVENTS, for any n from 0 to cluster.partitions - 1, with the
header `Nats-Msg-Id: <event_id>`: the stream drops a second publish of the same event id within its
duplicate window. The owner of partition n reads subject n through one durable pull consumer per
partition (`kassa-events-<n>`, kept by the NATS servers, so a new owner goes on where the old one
stopped), commits each batch through the same path as StreamEvents (the event id is the request id;
each event is routed to its customer's partition, whichever subject it came on), and only then acks
them. The subject spreads the reading over the owners; it does not have to be the customer's.
An event whose commit was not acknowledged (the owner died, lost its lease, the log did not answer)
is delivered again, to whichever node owns the partition then: its request id replays it if it was
recorded. So each event takes effect once, as on a StreamEvents stream, across owner changes.
An event kassa refuses for good (not a valid Event, INVALID_ARGUMENT, a business refusal) is acked
(terminated) too: its refusal is logged, and it is not delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
import nats.js.api as api

from kassa.core_ext.model import Code
from kassa.server.caller import CALLER, Caller
from kassa.server.cluster.streams import EVENTS_STREAM, TRANSIENT_ERRORS, events_subject
from kassa.server.logs import event as log_event
from kassa.v1 import processing_pb2

log = logging.getLogger("kassa.cluster.events")

EVENTS_BATCH_MAX = 500  # events fetched and committed together
EVENTS_FETCH_WAIT_S = 0.5  # a fetch that finds nothing returns after this long
EVENTS_ACK_WAIT_S = 5.0  # an event delivered and not acked for this long is delivered again
EVENTS_IN_FLIGHT_MAX = 5_000  # events delivered and not yet acked, per partition
EVENTS_REDELIVER_DELAY_S = 0.5  # an event whose commit failed for now is delivered again after this
OWNER_LOOK_INTERVAL_S = 0.1  # a node that does not own the partition looks again this often
JETSTREAM_CALLER = Caller("jetstream", frozenset(), False)  # the actor of events read from JetStream


def consumer_name(partition: int) -> str:
    return f"kassa-events-{partition}"


def consumer_config(partition: int) -> api.ConsumerConfig:
    return api.ConsumerConfig(durable_name=consumer_name(partition), ack_policy=api.AckPolicy.EXPLICIT,
                              ack_wait=EVENTS_ACK_WAIT_S, max_ack_pending=EVENTS_IN_FLIGHT_MAX,
                              filter_subject=events_subject(partition))


async def consume_events(node, process_events, partition: int = 0) -> None:
    """While `node` owns `partition`, commit the events of its subject through `process_events(events)
    -> AckBatch bytes` (ProcessingServicer.process_events) and ack them; until the node closes."""
    CALLER.set(JETSTREAM_CALLER)
    owns = node.owners[partition].serving
    while node.reading_events():
        if not owns():
            await node.pause(OWNER_LOOK_INTERVAL_S)
            continue
        try:
            subscription = await node.js.pull_subscribe(events_subject(partition), durable=consumer_name(partition),
                                                        stream=EVENTS_STREAM, config=consumer_config(partition))
            try:
                while owns() and node.reading_events():
                    await _consume_batch(subscription, process_events)
            finally:
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    await subscription.unsubscribe()
        except TRANSIENT_ERRORS as error:
            log_event(log, "events: JetStream unavailable; retrying", error=f"{type(error).__name__}: {error}")
            await node.pause(OWNER_LOOK_INTERVAL_S)
        except Exception:  # a bug: say it, keep the consumer going
            log.exception("events: consumer failed")
            await node.pause(OWNER_LOOK_INTERVAL_S)


async def _consume_batch(subscription, process_events) -> None:
    try:
        messages = await subscription.fetch(EVENTS_BATCH_MAX, timeout=EVENTS_FETCH_WAIT_S)
    except (asyncio.TimeoutError, nats.errors.TimeoutError):
        return
    events, readable = [], []
    for message in messages:
        try:
            events.append(processing_pb2.Event.FromString(message.data))
            readable.append(message)
        except Exception as error:  # protobuf's DecodeError: never valid, never delivered again
            log_event(log, "events: not a kassa.v1.Event; dropped", error=type(error).__name__)
            await message.term()
    if not events:
        return
    acks = processing_pb2.AckBatch.FromString(await process_events(events)).acks
    for message, ack in zip(readable, acks):
        if ack.code == Code.UNAVAILABLE:  # not recorded (or not known to be): deliver it again
            await message.nak(EVENTS_REDELIVER_DELAY_S)
            continue
        if ack.code != Code.OK:
            log_event(log, "events: refused", event_id=ack.event_id, code=Code(ack.code).name, error=ack.message)
        await message.ack()
