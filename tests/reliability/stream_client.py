"""A billing client in a process of its own, for tests that freeze or kill it: it opens one
StreamEvents call, sends one purchase, prints "acked" once the ack is read, and then keeps the stream
open, idle, until it is killed.

    python -m tests.reliability.stream_client ADDRESS ACCOUNT_ID
"""

from __future__ import annotations

import sys
import threading

import grpc

from kassa.v1 import processing_pb2, processing_pb2_grpc
from tests.server.stream_helpers import purchase_event


def main(address: str, account_id: str) -> None:
    forever = threading.Event()

    def requests():
        yield processing_pb2.EventBatch(events=[purchase_event("frozen-client/1", account_id, 2_000)])
        forever.wait()  # the stream stays open, sending nothing more

    with grpc.insecure_channel(address) as channel:
        acks = processing_pb2_grpc.ProcessingStub(channel).StreamEvents(requests())
        next(acks)
        print("acked", flush=True)
        for _ in acks:
            pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
