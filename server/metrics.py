"""Prometheus metrics, written by hand in the text exposition format, served on their own port.

Counters and histograms live in this process; `/metrics` renders them with the ledger's current
size and account count. With several workers each serves its own port (metrics.listen + index).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import defaultdict

log = logging.getLogger("kassa.metrics")

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GROUP_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
HTTP_REQUEST_BYTES_MAX = 8192  # of a scrape request's head


class Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        lines = []
        cumulative = 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


class Metrics:
    def __init__(self):
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.call_seconds: dict[str, Histogram] = {}
        self.commit_ops = Histogram(GROUP_SIZE_BUCKETS)
        self.commit_seconds = Histogram(LATENCY_BUCKETS_S)
        self.gauges: dict[str, object] = {}  # name -> callable giving the current value
        self.ledger = None

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.calls[(method, code)] += 1
        histogram = self.call_seconds.get(method)
        if histogram is None:
            histogram = self.call_seconds[method] = Histogram(LATENCY_BUCKETS_S)
        histogram.observe(seconds)

    def observe_commit(self, ops: int, seconds: float) -> None:
        self.commit_ops.observe(ops)
        self.commit_seconds.observe(seconds)

    def render(self) -> str:
        lines = ["# TYPE kassa_calls_total counter"]
        for (method, code), count in sorted(self.calls.items()):
            lines.append(f'kassa_calls_total{{method="{method}",code="{code}"}} {count}')
        lines.append("# TYPE kassa_call_duration_seconds histogram")
        for method, histogram in sorted(self.call_seconds.items()):
            lines.extend(histogram.render("kassa_call_duration_seconds", f'method="{method}"'))
        lines.append("# TYPE kassa_commit_operations histogram")
        lines.extend(self.commit_ops.render("kassa_commit_operations"))
        lines.append("# TYPE kassa_commit_duration_seconds histogram")
        lines.extend(self.commit_seconds.render("kassa_commit_duration_seconds"))
        for name, read in sorted(self.gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {read()}")
        if self.ledger is not None:
            stats = self.ledger.stats()
            lines.append("# TYPE kassa_ledger_bytes gauge")
            lines.append(f"kassa_ledger_bytes {stats['ledger_bytes']}")
            lines.append("# TYPE kassa_ledger_map_bytes gauge")
            lines.append(f"kassa_ledger_map_bytes {stats['map_bytes']}")
            lines.append("# TYPE kassa_accounts gauge")
            lines.append(f"kassa_accounts {stats['accounts']}")
            lines.append("# TYPE kassa_transactions gauge")
            lines.append(f"kassa_transactions {stats['transactions']}")
        return "\n".join(lines) + "\n"


async def serve_metrics(metrics: Metrics, listen: str) -> asyncio.AbstractServer:
    host, _, port = listen.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
        if head.startswith(b"GET ") and path == b"/metrics":
            body = metrics.render().encode()
            status = b"200 OK"
        else:
            body, status = b"not found; try /metrics\n", b"404 Not Found"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, int(port), limit=HTTP_REQUEST_BYTES_MAX, reuse_port=True)
