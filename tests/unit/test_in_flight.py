"""What streams may hold (server/servicers/in_flight.py): each stream within its own limits, all of
a worker's streams within the worker's byte limit; a stream past a limit waits until room is given
back, and a message larger than a limit is not refused forever."""

from __future__ import annotations

import asyncio

from kassa.server.servicers.in_flight import InFlight, StreamHold

EVENTS_MAX = 100
BYTES_MAX = 1_000
WORKER_BYTES_MAX = 2_500


async def settles() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(scenario) -> None:
    asyncio.run(scenario(InFlight(EVENTS_MAX, BYTES_MAX, WORKER_BYTES_MAX)))


class TestOneStream:
    def test_past_its_byte_limit_a_stream_waits_until_acks_give_bytes_back(self):
        async def scenario(in_flight):
            hold = StreamHold()
            await in_flight.take(hold, 0, 800)
            second = asyncio.ensure_future(in_flight.take(hold, 0, 300))
            await settles()
            assert not second.done()
            in_flight.give(hold, 0, 800)
            await settles()
            assert second.done()
            assert (hold.bytes, in_flight.worker_bytes) == (300, 300)

        run(scenario)

    def test_past_its_event_limit_a_stream_waits(self):
        async def scenario(in_flight):
            hold = StreamHold()
            await in_flight.take(hold, 60, 0)
            second = asyncio.ensure_future(in_flight.take(hold, 60, 0))
            await settles()
            assert not second.done()
            in_flight.give(hold, 60, 0)
            await settles()
            assert second.done()
            assert hold.events == 60

        run(scenario)

    def test_a_message_larger_than_the_limit_is_taken_when_the_stream_holds_nothing(self):
        async def scenario(in_flight):
            hold = StreamHold()
            await asyncio.wait_for(in_flight.take(hold, 150, 1_500), 1)
            assert (hold.events, hold.bytes) == (150, 1_500)
            more = asyncio.ensure_future(in_flight.take(hold, 1, 1))
            await settles()
            assert not more.done()
            more.cancel()

        run(scenario)


class TestWorker:
    def test_streams_together_stay_within_the_workers_limit_and_a_waiting_one_goes_on_when_room_comes(self):
        async def scenario(in_flight):
            holds = [StreamHold() for _ in range(3)]
            await in_flight.take(holds[0], 0, 1_000)
            await in_flight.take(holds[1], 0, 1_000)
            third = asyncio.ensure_future(in_flight.take(holds[2], 0, 600))  # 2,600 > 2,500
            await settles()
            assert not third.done()
            assert in_flight.worker_bytes == 2_000
            in_flight.give(holds[0], 0, 1_000)
            await settles()
            assert third.done()
            assert in_flight.worker_bytes == 1_600

        run(scenario)

    def test_a_message_larger_than_the_workers_limit_is_taken_when_the_worker_holds_nothing(self):
        async def scenario(in_flight):
            hold = StreamHold()
            await asyncio.wait_for(in_flight.take(hold, 0, 3_000), 1)
            assert in_flight.worker_bytes == 3_000

        run(scenario)

    def test_a_stream_that_ends_gives_back_everything_it_held(self):
        async def scenario(in_flight):
            other, ending, waiting = StreamHold(), StreamHold(), StreamHold()
            await in_flight.take(other, 0, 1_000)
            await in_flight.take(ending, 10, 500)
            await in_flight.take(ending, 10, 400)  # two messages not acked yet: 1,900 in all
            blocked = asyncio.ensure_future(in_flight.take(waiting, 0, 800))
            await settles()
            assert not blocked.done()
            in_flight.give(ending, ending.events, ending.bytes)
            await settles()
            assert blocked.done()
            assert (ending.events, ending.bytes, in_flight.worker_bytes) == (0, 0, 1_800)

        run(scenario)
