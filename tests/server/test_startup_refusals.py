"""`kassa serve` that must not serve: one line on stderr naming the address, the ledger or the TLS key,
exit 2, no traceback. Only a server's own workers share its port and its ledger; a second server on
either is refused at start, with one worker or several, whichever of the two started first."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest

from kassa.v1 import admin_pb2, admin_pb2_grpc
from tests.kassa_harness import KassaServer
from tests.server.helpers import open_account

REFUSAL_TIMEOUT_S = 30  # a refused server exits well within this
OTHERS_EXIT_WAIT_S = 2  # after one of two servers started at once exits: time for the other to exit too
FRESH_CHANNELS = 20  # connections opened one after another: a second server on the port would answer some
CALL_TIMEOUT_S = 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused_start(workdir, env: dict[str, str], config_text: str | None = None) -> tuple[int, list[str]]:
    """Run `kassa serve` that is expected to be refused: its exit status and stderr lines. One that
    serves instead is killed (with its workers) and the test fails."""
    workdir.mkdir(exist_ok=True)
    server = KassaServer(workdir, env=env, config_text=config_text)
    command = [sys.executable, "-m", "kassa.server.cli", "serve", "--config", str(server.config_path())]
    process = subprocess.Popen(command, cwd=workdir, env=server.environ, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=REFUSAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"kassa served instead of being refused:\n{stderr}")
    return process.returncode, stderr.splitlines()


def serving_addresses(server, count: int) -> list[str]:
    """The addresses in the "serving" records of `count` workers, once each of them serves."""
    deadline = time.monotonic() + REFUSAL_TIMEOUT_S
    while True:
        records = [json.loads(line) for line in list(server.log_lines) if '"msg":"serving"' in line]
        if len(records) >= count:
            return [record["address"] for record in records]
        assert time.monotonic() < deadline, "".join(server.log_lines)
        time.sleep(0.05)


def ledgers_answering(address: str) -> set[int]:
    """GetStats over FRESH_CHANNELS new connections: the account counts seen (one per ledger answering)."""
    seen = set()
    for _ in range(FRESH_CHANNELS):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stats = admin_pb2_grpc.AdminStub(channel).GetStats(admin_pb2.GetStatsRequest(), timeout=CALL_TIMEOUT_S)
            seen.add(stats.accounts)
    return seen


class TestOneServerPerAddress:
    @pytest.mark.parametrize("first_workers, second_workers", [(1, 1), (1, 2), (2, 1), (2, 2)])
    def test_a_second_server_on_the_address_is_refused(self, start_kassa, tmp_path, first_workers, second_workers):
        address = f"127.0.0.1:{free_port()}"
        first = start_kassa(env={"KASSA_SERVER_LISTEN": address, "KASSA_SERVER_WORKERS": str(first_workers)})
        serving_addresses(first, first_workers)
        open_account(first, "FIRST-1")

        code, said = refused_start(tmp_path / "second", {"KASSA_SERVER_LISTEN": address,
                                                         "KASSA_SERVER_WORKERS": str(second_workers)})

        assert code == 2
        assert said == [f"kassa: {address} is in use by another process"]
        assert ledgers_answering(address) == {1}, "every connection reaches the first server's ledger"

    @pytest.mark.parametrize("reuse_port", [False, True])
    @pytest.mark.parametrize("workers", [1, 2])
    def test_a_port_another_program_listens_on_is_refused(self, tmp_path, workers, reuse_port):
        other = socket.socket()
        if reuse_port:  # a program that shares its port as kassa's workers do: still not kassa's
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        address = f"127.0.0.1:{other.getsockname()[1]}"
        try:
            code, said = refused_start(tmp_path / "kassa", {"KASSA_SERVER_LISTEN": address,
                                                            "KASSA_SERVER_WORKERS": str(workers)})
        finally:
            other.close()

        assert code == 2
        assert said == [f"kassa: {address} is in use by another process"]

    def test_of_two_servers_started_at_once_on_one_address_one_serves(self, tmp_path):
        address = f"127.0.0.1:{free_port()}"
        for name in ("left", "right"):
            (tmp_path / name).mkdir()
        servers = [KassaServer(tmp_path / name, env={"KASSA_SERVER_LISTEN": address, "KASSA_SERVER_WORKERS": "2"})
                   for name in ("left", "right")]
        with _started_at_once(servers) as processes:
            refused = _the_refused(processes)
            assert len(refused) == 1, [process.returncode for process in processes]
            assert refused[0].returncode == 2
            assert refused[0].stderr.read().splitlines() == [f"kassa: {address} is in use by another process"]

    def test_a_foreign_process_holding_the_old_abstract_lock_name_does_not_block_the_start(self, start_kassa):
        """Abstract Unix socket names have no permissions: any local user could bind kassa's old
        address lock name and keep it from starting. The lock is now a file of this user's."""
        port = free_port()
        squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        squatter.bind(f"\0kassa-listen:127.0.0.1:{port}")
        try:
            server = start_kassa(env={"KASSA_SERVER_LISTEN": f"127.0.0.1:{port}", "KASSA_SERVER_WORKERS": "2"})

            assert serving_addresses(server, 2) == [f"127.0.0.1:{port}"] * 2
        finally:
            squatter.close()

    def test_of_two_servers_started_at_once_on_a_wildcard_and_a_specific_host_one_serves(self, tmp_path):
        """0.0.0.0:P and 127.0.0.1:P both pass their probes while neither listens: the lock is keyed by
        the port alone, so one of them is refused."""
        port = free_port()
        addresses = {"wildcard": f"0.0.0.0:{port}", "specific": f"127.0.0.1:{port}"}
        servers = []
        for name, address in addresses.items():
            (tmp_path / name).mkdir()
            servers.append(KassaServer(tmp_path / name, env={"KASSA_SERVER_LISTEN": address,
                                                             "KASSA_SERVER_WORKERS": "2"}))
        with _started_at_once(servers) as processes:
            refused = _the_refused(processes)
            assert len(refused) == 1, [process.returncode for process in processes]
            assert refused[0].returncode == 2
            address = list(addresses.values())[processes.index(refused[0])]
            assert refused[0].stderr.read().splitlines() == [f"kassa: {address} is in use by another process"]

    def test_a_lock_directory_others_may_write_to_is_refused(self, tmp_path):
        runtime = tmp_path / "runtime"
        (runtime / "kassa").mkdir(parents=True)
        (runtime / "kassa").chmod(0o777)

        code, said = refused_start(tmp_path / "kassa", {"XDG_RUNTIME_DIR": str(runtime),
                                                        "KASSA_SERVER_LISTEN": f"127.0.0.1:{free_port()}"})

        assert code == 2
        assert said == [f"kassa: the address lock directory {runtime / 'kassa'} is not this user's alone "
                        f"(owner uid {os.getuid()}, mode drwxrwxrwx): remove it or fix it"]

    def test_port_0_gives_every_worker_the_same_port(self, start_kassa):
        server = start_kassa(env={"KASSA_SERVER_LISTEN": "127.0.0.1:0", "KASSA_SERVER_WORKERS": "2"})

        addresses = serving_addresses(server, 2)

        assert addresses[0] == addresses[1]
        assert not addresses[0].endswith(":0")

    def test_an_address_that_is_not_this_hosts_is_refused(self, tmp_path):
        code, said = refused_start(tmp_path / "kassa", {"KASSA_SERVER_LISTEN": "192.0.2.1:50051"})

        assert code == 2
        assert said == ["kassa: cannot listen on 192.0.2.1:50051: Cannot assign requested address"]


@contextlib.contextmanager
def _started_at_once(servers: list[KassaServer]):
    """`kassa serve` for each of `servers` at once, each in its own session; stopped afterwards."""
    processes = []
    for server in servers:
        command = [sys.executable, "-m", "kassa.server.cli", "serve", "--config", str(server.config_path())]
        processes.append(subprocess.Popen(command, cwd=server.workdir, env=server.environ,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(REFUSAL_TIMEOUT_S)
            process.stderr.close()


def _the_refused(processes: list[subprocess.Popen]) -> list[subprocess.Popen]:
    """The processes that exit: wait for the first (a refused one exits within REFUSAL_TIMEOUT_S),
    then OTHERS_EXIT_WAIT_S more for the others, which keep serving if they were not refused."""
    deadline = time.monotonic() + REFUSAL_TIMEOUT_S
    while all(process.poll() is None for process in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(OTHERS_EXIT_WAIT_S)
    return [process for process in processes if process.poll() is not None]


class TestOneServerPerLedger:
    @pytest.mark.parametrize("workers", [1, 2])
    def test_a_second_server_on_the_ledger_is_refused_naming_the_first(self, start_kassa, tmp_path, workers):
        first = start_kassa(env={"KASSA_SERVER_WORKERS": str(workers)})
        serving_addresses(first, workers)

        code, said = refused_start(tmp_path / "second", {"KASSA_LEDGER_PATH": str(first.ledger_path)})

        assert code == 2
        assert said == [f"kassa: the ledger at {first.ledger_path} is in use by another kassa server "
                        f"(pid {first.process.pid})"]

    def test_a_process_claiming_to_be_a_worker_without_the_claims_is_refused(self, start_kassa, tmp_path):
        """`--claims` names descriptors a worker was handed; a process naming others (here its stdio)
        takes its own claims, and is refused."""
        first = start_kassa(env={"KASSA_SERVER_WORKERS": "2"})
        address = serving_addresses(first, 2)[0]
        (tmp_path / "impostor").mkdir()
        server = KassaServer(tmp_path / "impostor", env={"KASSA_SERVER_LISTEN": address,
                                                         "KASSA_LEDGER_PATH": str(first.ledger_path)})
        command = [sys.executable, "-m", "kassa.server.cli", "serve", "--config", str(server.config_path()),
                   "--workers", "1", "--worker-index", "1", "--claims", "0,1,2"]

        done = subprocess.run(command, cwd=server.workdir, env=server.environ, capture_output=True, text=True,
                              timeout=REFUSAL_TIMEOUT_S)

        assert done.returncode == 2
        assert done.stderr.splitlines() == [f"kassa: {address} is in use by another process"]


class TestTlsFiles:
    @pytest.mark.parametrize("workers", [1, 2])
    @pytest.mark.parametrize("missing", ["key_file", "cert_file"])
    def test_a_missing_key_or_certificate_is_named_in_one_line(self, tmp_path, workers, missing):
        present = tmp_path / "present.pem"
        present.write_text("-----BEGIN NOTHING-----\n")
        absent = tmp_path / "absent.pem"
        files = {"key_file": present, "cert_file": present, missing: absent}
        config_text = f'[tls]\ncert_file = "{files["cert_file"]}"\nkey_file = "{files["key_file"]}"\n'

        code, said = refused_start(tmp_path / "kassa", {"KASSA_SERVER_WORKERS": str(workers)}, config_text)

        assert code == 2
        assert said == [f"kassa: tls.{missing}: cannot read {absent}: No such file or directory"]
