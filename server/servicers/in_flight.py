"""What StreamEvents calls hold: events and request bytes read from a stream and not yet acked.

Each stream stays within its own limits (`processing.stream_events_in_flight_max` events,
`processing.stream_bytes_in_flight_max` bytes) and all of a worker's streams together within
`processing.streams_bytes_in_flight_max` bytes. A stream takes its share before it decodes a
message (bytes) and before it commits it (events), and waits while there is no room: it reads
nothing meanwhile, so HTTP/2 flow control stops its client. It gives the share back once the acks
for that message are written. Bytes are counted as they came on the wire; decoded, events take up
to MEMORY_PER_REQUEST_BYTE times that in memory, so the byte limits bound the memory streams hold.
"""

from __future__ import annotations

import asyncio

# Memory a decoded event takes per byte of its request, at most (tracemalloc over purchases of 1,
# 5, 50 and 1,000 lines, short and long ids: 8.5 to 12.8): what turns the byte limits into memory.
MEMORY_PER_REQUEST_BYTE = 13


class StreamHold:
    """One stream's share: events and request bytes read and not yet acked."""

    __slots__ = ("events", "bytes")

    def __init__(self):
        self.events = 0
        self.bytes = 0


class InFlight:
    """The shares of one worker's streams. A stream holding nothing of a kind may take one message
    past its own limit (a message larger than the limit is not refused), never past the worker's
    limit unless the worker holds nothing."""

    def __init__(self, events_max: int, bytes_max: int, worker_bytes_max: int):
        self.events_max = events_max
        self.bytes_max = bytes_max
        self.worker_bytes_max = worker_bytes_max
        self.worker_bytes = 0
        self._waiters: list[asyncio.Future] = []

    def _fits(self, hold: StreamHold, events: int, size_bytes: int) -> bool:
        if events and hold.events and hold.events + events > self.events_max:
            return False
        if size_bytes and hold.bytes and hold.bytes + size_bytes > self.bytes_max:
            return False
        return not (size_bytes and self.worker_bytes and self.worker_bytes + size_bytes > self.worker_bytes_max)

    async def take(self, hold: StreamHold, events: int, size_bytes: int) -> None:
        """Wait for room, then add `events` and `size_bytes` to the stream's share."""
        while not self._fits(hold, events, size_bytes):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        hold.events += events
        hold.bytes += size_bytes
        self.worker_bytes += size_bytes

    def give(self, hold: StreamHold, events: int, size_bytes: int) -> None:
        """Give back part of a stream's share (all of it when the stream ends); waiting streams
        look again."""
        hold.events -= events
        hold.bytes -= size_bytes
        self.worker_bytes -= size_bytes
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
