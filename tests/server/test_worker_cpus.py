"""Worker processes and CPUs: with `server.pin_workers` (the default) each worker keeps all its
threads (event loop, commit thread, gRPC's poller) on its own share of the CPUs this server may
use; turned off, or with more workers than CPUs, the workers run wherever the kernel puts them. Checked on the running workers'
threads in /proc, not on what the server says it did."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from kassa.server.cpus import cpu_shares
from tests.server.helpers import balance, open_account

WORKERS = 2
START_TIMEOUT_S = 30

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serving_records(server, count: int) -> list[dict]:
    """The "serving" log records of `count` workers, once each of them serves."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        records = []
        for text_line in list(server.log_lines):
            try:
                record = json.loads(text_line)
            except ValueError:
                continue
            if record.get("msg") == "serving":
                records.append(record)
        if len(records) >= count:
            return sorted(records, key=lambda record: record["worker"])
        assert time.monotonic() < deadline, "".join(server.log_lines)
        time.sleep(0.05)


def thread_cpus(pid: int) -> dict[str, set[int]]:
    """Each thread of process `pid` (by name and id): the CPUs the kernel lets it run on."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        found[f"{name}/{tid}"] = os.sched_getaffinity(int(tid))
    return found


def start_workers(start_kassa, pin: bool, workers: int = WORKERS):
    server = start_kassa(env={
        "KASSA_SERVER_WORKERS": str(workers),
        "KASSA_SERVER_LISTEN": f"127.0.0.1:{free_port()}",
        "KASSA_SERVER_PIN_WORKERS": "true" if pin else "false",
    })
    return server, serving_records(server, workers)


class TestPinnedWorkers:
    def test_each_workers_threads_stay_on_its_own_share_of_the_cpus(self, start_kassa):
        usable = os.sched_getaffinity(0)
        server, workers = start_workers(start_kassa, pin=True)
        open_account(server, "CPU-1")  # a commit: the commit thread exists
        assert balance(server, "CPU-1").active_points == 0

        shares = []
        for record in workers:
            share = set(record["cpus"])
            threads = thread_cpus(record["pid"])
            assert len(threads) >= 2, threads  # the event loop and at least gRPC's threads
            assert all(cpus == share for cpus in threads.values()), (record["worker"], share, threads)
            shares.append(share)
        assert set().union(*shares) == usable  # every CPU the server may use has a worker
        if len(usable) >= WORKERS:
            assert not shares[0] & shares[1], shares  # and no two workers share one
        else:
            assert shares[0] == shares[1] == usable

    def test_turned_off_every_worker_may_run_on_every_cpu(self, start_kassa):
        usable = os.sched_getaffinity(0)
        server, workers = start_workers(start_kassa, pin=False)
        open_account(server, "CPU-2")
        for record in workers:
            assert set(record["cpus"]) == usable
            assert all(cpus == usable for cpus in thread_cpus(record["pid"]).values())


    def test_more_workers_than_cpus_are_not_pinned(self, start_kassa):
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            pytest.skip("needs two CPUs")
        two = set(usable[:2])
        os.sched_setaffinity(0, two)  # the server inherits it: two CPUs for three workers
        try:
            server, workers = start_workers(start_kassa, pin=True, workers=3)
        finally:
            os.sched_setaffinity(0, usable)
        open_account(server, "CPU-3")
        assert len(workers) == 3
        for record in workers:
            assert set(record["cpus"]) == two
            assert all(cpus == two for cpus in thread_cpus(record["pid"]).values())


class TestCpuShares:
    @pytest.mark.parametrize("cpus, workers, shares", [
        ([0, 1], 2, [[0], [1]]),  # as many workers as CPUs: one each
        ([0, 1, 2, 3, 4, 5, 6, 7], 2, [[0, 1, 2, 3], [4, 5, 6, 7]]),  # fewer: runs of neighbours
        ([0, 1, 2], 2, [[0], [1, 2]]),
        ([2, 3, 6, 7], 4, [[2], [3], [6], [7]]),  # a taskset or cpuset: only those
        ([5], 1, [[5]]),
    ])
    def test_shares(self, cpus, workers, shares):
        assert cpu_shares(cpus, workers) == shares

    def test_never_two_workers_on_one_cpu(self):
        with pytest.raises(ValueError, match="3 workers cannot each have their own of 2 CPUs"):
            cpu_shares([0, 1], 3)

    def test_every_worker_gets_cpus_and_every_cpu_a_worker(self):
        for count in range(1, 18):
            cpus = list(range(100, 100 + count))
            for workers in range(1, count + 1):
                shares = cpu_shares(cpus, workers)
                assert len(shares) == workers and all(shares), (count, workers, shares)
                assert sorted(set().union(*map(set, shares))) == cpus, (count, workers, shares)
                assert sum(map(len, shares)) == count, (count, workers, shares)  # no CPU in two shares
