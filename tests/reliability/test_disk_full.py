"""Disk full: the ledger's file system runs out of space long before the LMDB map does.

The ledger lives on a small tmpfs mounted for the test (the map, 64 MiB, is far larger than the
8 MiB disk). A filler file in the same tmpfs takes all but a little of the space; purchases go on
until one is refused. Promises: the refusal is RESOURCE_EXHAUSTED naming disk space (DESIGN §3),
reads keep working, and once the filler is deleted writes resume without a restart, nothing
acknowledged is lost and `kassa verify` exits 0 after the server stops.

Needs root (mount); the tmpfs is unmounted in teardown.
"""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from kassa.v1 import accounts_pb2, common_pb2, processing_pb2
from tests.kassa_harness import KassaServer
from tests.reliability import CALL_TIMEOUT_S, assert_verifies, purchase, transactions_by_request
from tests.server.helpers import balance, by_account, line, open_account, receipt, statement

DISK_BYTES = 8 * 1024**2
MAP_SIZE_BYTES = 64 * 1024**2  # larger than the disk: the disk fills first
LEFT_FREE_BYTES = 384 * 1024  # what the filler leaves for the ledger to grow into
POINTS = 10
ACCOUNT = "DISK-1"


def free_bytes(path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class SmallDisk:
    def __init__(self, root):
        self.root = root
        self.filler = root / "filler"

    def fill(self, leave_bytes: int) -> None:
        size = free_bytes(self.root) - leave_bytes
        assert size > 0
        with open(self.filler, "ab") as out:
            out.write(b"\0" * size)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path):
    """A kassa server whose ledger directory is on an 8 MiB tmpfs of its own."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    options = f"size={DISK_BYTES},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], check=True)
    server = None
    try:
        workdir = tmp_path / "server"
        workdir.mkdir()
        server = KassaServer(workdir, env={
            "KASSA_LEDGER_PATH": str(mount_point / "ledger"),
            "KASSA_LEDGER_MAP_SIZE_BYTES": str(MAP_SIZE_BYTES),
        })
        server.start()
        open_account(server, ACCOUNT)
        yield server, SmallDisk(mount_point)
    finally:
        if server is not None:
            server.stop()
        result = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        if result.returncode != 0:  # something still holds it open: detach it so it cannot leak
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
            pytest.fail(f"could not unmount the test tmpfs: {result.stderr}")


def write_until_refused(server, prefix: str = "fill") -> tuple[list[str], processing_pb2.AccrueRequest, grpc.RpcError]:
    """Purchases until one is refused (whatever the code); (acknowledged ids, refused request, its error)."""
    acked = []
    for number in range(100_000):
        request = purchase(ACCOUNT, f"{prefix}/{number}", POINTS)
        try:
            server.processing.Accrue(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            return acked, request, error
        acked.append(request.request_id)
    raise AssertionError("the disk never filled up")


def assert_reads_work(server):
    assert server.accounts.GetBalance(
        accounts_pb2.GetBalanceRequest(customer=by_account(ACCOUNT)), timeout=CALL_TIMEOUT_S
    ).account_id == ACCOUNT
    preview = server.processing.Calculate(
        processing_pb2.CalculateRequest(customer=by_account(ACCOUNT), receipt=receipt(line(1, 2_000))),
        timeout=CALL_TIMEOUT_S,
    )
    assert preview.calculation.earned_points == 100
    assert server.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=by_account(ACCOUNT))).account_id
    return statement(server, ACCOUNT)


class TestDiskFull:
    def test_a_write_on_a_full_disk_is_refused_resource_exhausted_naming_space(self, small_disk):
        server, disk = small_disk
        disk.fill(LEFT_FREE_BYTES)

        acked, refused_request, refusal = write_until_refused(server)
        # More writes of other sizes on the full disk: a commit's pages may not fit at all (ENOSPC)
        # or fit in part (a short write); each must be refused the same way.
        refusals = [(refused_request.request_id, refusal.code(), refusal.details())]
        for number in range(10):
            request = purchase(ACCOUNT, f"on-full/{number}", POINTS)
            try:
                server.processing.Accrue(request, timeout=CALL_TIMEOUT_S)
                acked.append(request.request_id)
            except grpc.RpcError as error:
                refusals.append((request.request_id, error.code(), error.details()))
        batch = [purchase(ACCOUNT, f"on-full-batch/{number}", POINTS) for number in range(50)]
        reply = server.processing.ProcessBatch(
            processing_pb2.ProcessBatchRequest(operations=[processing_pb2.Operation(accrue=r) for r in batch]),
            timeout=CALL_TIMEOUT_S,
        )
        for request, result in zip(batch, reply.results):
            if result.code == common_pb2.CODE_OK:
                acked.append(request.request_id)
            else:
                code = grpc.StatusCode[common_pb2.Code.Name(result.code).removeprefix("CODE_")]
                refusals.append((request.request_id, code, result.message))

        wrong = [(request_id, code.name, details) for request_id, code, details in refusals
                 if code != grpc.StatusCode.RESOURCE_EXHAUSTED or "space" not in details]
        assert not wrong, f"{len(wrong)} of {len(refusals)} writes on a full disk were not refused " \
                          f"RESOURCE_EXHAUSTED naming space, e.g. {wrong[:3]}"
        found = transactions_by_request(server, ACCOUNT)
        assert not {request_id for request_id, _, _ in refusals} & set(found), "a refused write left a transaction"
        assert balance(server, ACCOUNT).active_points == POINTS * len(acked)

    def test_reads_keep_working_while_the_disk_is_full(self, small_disk):
        server, disk = small_disk
        disk.fill(LEFT_FREE_BYTES)
        acked, refused_request, _ = write_until_refused(server)

        transactions = assert_reads_work(server)

        recorded = {transaction.request_id for transaction in transactions}
        assert set(acked) <= recorded
        assert refused_request.request_id not in recorded
        assert balance(server, ACCOUNT).active_points == POINTS * len(acked)

    def test_writes_resume_once_space_is_freed_and_nothing_acknowledged_is_lost(self, small_disk):
        server, disk = small_disk
        disk.fill(LEFT_FREE_BYTES)
        acked, refused_request, refusal = write_until_refused(server)
        assert acked, f"the first purchase was already refused: {refusal.code().name} {refusal.details()}"

        disk.free()
        retried = server.processing.Accrue(refused_request, timeout=CALL_TIMEOUT_S)  # no restart
        more = [purchase(ACCOUNT, f"after-free/{n}", POINTS) for n in range(50)]
        for request in more:
            server.processing.Accrue(request, timeout=CALL_TIMEOUT_S)
        replayed = server.processing.Accrue(refused_request, timeout=CALL_TIMEOUT_S)

        assert replayed.transaction_id == retried.transaction_id
        applied = [*acked, refused_request.request_id, *(request.request_id for request in more)]
        found = transactions_by_request(server, ACCOUNT)
        for request_id in applied:
            times = len(found.get(request_id, []))
            assert times == 1, f"{request_id} is in the ledger {times} times"
        assert balance(server, ACCOUNT).active_points == POINTS * len(applied)
        assert server.stop() == 0
        assert_verifies(server)
