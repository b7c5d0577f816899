"""The LMDB map grows by itself under load (DESIGN §4 Lifecycle, core_ext/map_size.py).

A server starts with the smallest map the config allows (1 MiB) and a maximum of 64 MiB. Purchases
come in batches on several connections (so that both workers of a two-worker server take them):
none is refused while the map doubles, each worker grows the map or adopts the other's growth, and
`kassa verify`, opening the ledger with the 1 MiB starting size, passes. Reads (Calculate,
GetBalance) sent while the map grows are all answered. At the maximum a write is refused
RESOURCE_EXHAUSTED naming `ledger.map_size_bytes_max`, nothing of it written, and a restart with a
larger maximum goes on.
"""

from __future__ import annotations

import json
import threading

import grpc
import pytest

from kassa.v1 import accounts_pb2, common_pb2, processing_pb2
from tests.reliability import (
    CALL_TIMEOUT_S, accounts_stub, assert_verifies, fresh_channel, processing_stub, purchase, transactions_by_request,
)
from tests.server.helpers import balance, by_account, line, open_account, receipt

MAP_START_BYTES = 1024**2  # the least server/config.py allows
MAP_MAX_BYTES = 64 * 1024**2
MAP_GROWN_BYTES = 16 * MAP_START_BYTES  # the load runs until every worker's map is at least this
DISK_RESERVE_BYTES = 64 * 1024**2
BATCH = 100  # purchases per ProcessBatch
CONNECTIONS = 4  # load threads
BATCHES_PER_CONNECTION = 5  # then a thread connects anew: SO_REUSEPORT spreads the connections over the workers
PURCHASES_MAX = 60_000  # a bound on the load, far past what 8 MiB takes (about 600 bytes a purchase)
POINTS = 10
ACCOUNT = "GROW-1"


def growing(start_kassa, workers: int = 1, map_max_bytes: int = MAP_MAX_BYTES):
    server = start_kassa(env={
        "KASSA_SERVER_WORKERS": str(workers),
        "KASSA_LEDGER_MAP_SIZE_BYTES": str(MAP_START_BYTES),
        "KASSA_LEDGER_MAP_SIZE_BYTES_MAX": str(map_max_bytes),
        "KASSA_LEDGER_DISK_RESERVE_BYTES": str(DISK_RESERVE_BYTES),
    })
    open_account(server, ACCOUNT)
    return server


def map_events(server) -> list[dict]:
    """The 'ledger map grown' and 'ledger map adopted' lines, in order."""
    events = []
    for text in list(server.log_lines):
        if '"msg":"ledger map ' in text:
            events.append(json.loads(text))
    return events


def map_bytes_by_worker(server) -> dict[int, int]:
    """Each worker's map size after its last growth or adoption."""
    sizes: dict[int, int] = {}
    for entry in map_events(server):
        if entry["msg"] in ("ledger map grown", "ledger map adopted"):
            sizes[entry["worker"]] = entry["to_bytes"]
    return sizes


class Load:
    """Batches of purchases on `CONNECTIONS` threads until `done()`; what was acknowledged and refused."""

    def __init__(self, server, done, prefix: str = "load"):
        self.server = server
        self.done = done
        self.prefix = prefix
        self.acked: list[str] = []
        self.refused: list[tuple[str, str]] = []  # (code, message)
        self.next_number = 0
        self.lock = threading.Lock()

    def numbers(self) -> range | None:
        with self.lock:
            if self.done() or self.refused or self.next_number >= PURCHASES_MAX:
                return None
            first = self.next_number
            self.next_number += BATCH
            return range(first, first + BATCH)

    def run_one_thread(self) -> None:
        while self.run_one_connection():
            pass

    def run_one_connection(self) -> bool:
        """`BATCHES_PER_CONNECTION` batches on a new connection; False once the load is over."""
        with fresh_channel(self.server) as channel:
            stub = processing_stub(channel)
            for _ in range(BATCHES_PER_CONNECTION):
                numbers = self.numbers()
                if numbers is None:
                    return False
                requests = [purchase(ACCOUNT, f"{self.prefix}/{n}", POINTS) for n in numbers]
                reply = stub.ProcessBatch(processing_pb2.ProcessBatchRequest(
                    operations=[processing_pb2.Operation(accrue=r) for r in requests]), timeout=CALL_TIMEOUT_S)
                with self.lock:
                    for request, result in zip(requests, reply.results):
                        if result.code == common_pb2.CODE_OK:
                            self.acked.append(request.request_id)
                        else:
                            self.refused.append((common_pb2.Code.Name(result.code), result.message))
        return True

    def run(self) -> None:
        threads = [threading.Thread(target=self.run_one_thread) for _ in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)


class TestMapGrowth:
    def test_two_workers_grow_the_map_under_load_without_a_refused_call(self, start_kassa):
        server = growing(start_kassa, workers=2)

        def every_worker_grown() -> bool:
            sizes = map_bytes_by_worker(server)
            return len(sizes) == 2 and min(sizes.values()) >= MAP_GROWN_BYTES

        load = Load(server, every_worker_grown)
        load.run()

        assert not load.refused, f"{len(load.refused)} purchases refused while the map grew, e.g. {load.refused[:3]}"
        assert every_worker_grown(), f"map sizes by worker after {len(load.acked)} purchases: {map_bytes_by_worker(server)}"
        grown = [entry for entry in map_events(server) if entry["msg"] == "ledger map grown"]
        assert grown[0]["from_bytes"] == MAP_START_BYTES
        assert grown[0]["to_bytes"] == 2 * MAP_START_BYTES
        adopted = {entry["worker"] for entry in map_events(server) if entry["msg"] == "ledger map adopted"}
        assert adopted, "neither worker adopted the other's growth"
        assert balance(server, ACCOUNT).active_points == POINTS * len(load.acked)
        assert server.stop() == 0
        assert_verifies(server)  # opened with the 1 MiB starting size

    def test_reads_sent_while_the_map_grows_are_answered(self, start_kassa):
        server = growing(start_kassa)
        load = Load(server, lambda: map_bytes_by_worker(server).get(0, 0) >= MAP_GROWN_BYTES)
        failures: list[str] = []
        answered = 0

        def read_until_loaded() -> None:
            nonlocal answered
            calculate = processing_pb2.CalculateRequest(customer=by_account(ACCOUNT), receipt=receipt(line(1, 2_000)))
            get_balance = accounts_pb2.GetBalanceRequest(customer=by_account(ACCOUNT))
            with fresh_channel(server) as channel:
                processing, accounts = processing_stub(channel), accounts_stub(channel)
                while loader.is_alive():
                    try:
                        processing.Calculate(calculate, timeout=CALL_TIMEOUT_S)
                        accounts.GetBalance(get_balance, timeout=CALL_TIMEOUT_S)
                        answered += 2
                    except grpc.RpcError as error:
                        failures.append(f"{error.code().name}: {error.details()}")

        loader = threading.Thread(target=load.run)
        loader.start()
        reader = threading.Thread(target=read_until_loaded)
        reader.start()
        loader.join(120)
        reader.join(CALL_TIMEOUT_S)

        assert not failures, f"{len(failures)} reads failed while the map grew, e.g. {failures[:3]}"
        assert answered > 0
        assert not load.refused, load.refused[:3]
        steps = [entry for entry in map_events(server) if entry["msg"] == "ledger map grown"]
        assert len(steps) >= 3, f"the map grew {len(steps)} times"

    def test_at_the_maximum_a_write_is_refused_whole_and_a_larger_maximum_goes_on(self, start_kassa):
        server = growing(start_kassa, map_max_bytes=2 * MAP_START_BYTES)
        load = Load(server, lambda: False)  # until refused
        load.run()
        assert load.refused, "the load ended before the map reached its maximum"
        code, message = load.refused[0]
        assert code == "CODE_RESOURCE_EXHAUSTED", load.refused[0]
        assert "raise ledger.map_size_bytes_max" in message, message
        assert map_bytes_by_worker(server) == {0: 2 * MAP_START_BYTES}

        late = [purchase(ACCOUNT, f"late/{n}", POINTS) for n in range(50)]
        reply = server.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(
            operations=[processing_pb2.Operation(accrue=r) for r in late]), timeout=CALL_TIMEOUT_S)
        applied = [r.request_id for r, result in zip(late, reply.results) if result.code == common_pb2.CODE_OK]
        found = transactions_by_request(server, ACCOUNT)
        refused = [r.request_id for r in late if r.request_id not in applied]
        assert not set(refused) & set(found), "a refused purchase left a transaction"
        assert balance(server, ACCOUNT).active_points == POINTS * (len(load.acked) + len(applied))

        assert server.stop() == 0
        assert_verifies(server)
        server.extra_env["KASSA_LEDGER_MAP_SIZE_BYTES_MAX"] = str(MAP_MAX_BYTES)
        server.start()
        for request in late:
            server.processing.Accrue(request, timeout=CALL_TIMEOUT_S)
        more = Load(server, lambda: map_bytes_by_worker(server)[0] > 2 * MAP_START_BYTES, prefix="more")
        more.run()
        assert not more.refused, more.refused[:3]
        assert map_bytes_by_worker(server)[0] > 2 * MAP_START_BYTES
        assert balance(server, ACCOUNT).active_points == POINTS * (len(load.acked) + len(late) + len(more.acked))
