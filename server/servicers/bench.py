"""kassa.v1.Bench: no-op twins of the hot path, the baseline bench/throughput.py measures beside it.

Served only when `server.bench_noop` is true. They do what gRPC and protobuf must do for the real
RPCs (decode the request, encode an answer) and nothing else.
"""

from __future__ import annotations

from kassa.v1 import bench_pb2_grpc, processing_pb2


class BenchServicer(bench_pb2_grpc.BenchServicer):
    async def NoopAccrue(self, request, context):
        return processing_pb2.AccrueResponse()

    async def NoopStream(self, request_iterator, context):
        async for batch in request_iterator:
            yield processing_pb2.AckBatch(acks=[processing_pb2.EventAck(event_id=e.event_id) for e in batch.events])
