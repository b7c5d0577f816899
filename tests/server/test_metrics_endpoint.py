"""The metrics endpoint of a whole server: one scrape of metrics.listen gives every worker's figures,
summed, in the exposition prometheus_client writes (HELP and TYPE for every metric, process_*);
events and batch operations counted by outcome; an address in use or not host:port refused in one
line; `kassa stats` against an endpoint that does not answer says so in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from kassa.v1 import accounts_pb2_grpc, processing_pb2, processing_pb2_grpc
from tests.server.helpers import by_account, earn, line, open_account, receipt

WORKERS = 2
TERMINALS = 12  # client threads, each on a connection of its own: the kernel spreads them over the workers
PURCHASES_PER_TERMINAL = 5
EVENTS = 300  # on one stream, in EVENT_BATCHES messages
EVENT_BATCHES = 3
START_TIMEOUT_S = 30
GAUGE_WAIT_S = 5  # workers write their gauges every second
ALERTS = Path(__file__).resolve().parents[2] / "config" / "prometheus" / "kassa-alerts.yml"
METRIC_NAME = re.compile(r"\b((?:grpc_server|kassa|process)_\w+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return reply.read().decode()


def samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value, labels as written (sorted by name, as prometheus_client writes them)."""
    found = {}
    for text_line in text.splitlines():
        if text_line and not text_line.startswith("#"):
            name, _, value = text_line.rpartition(" ")
            found[name] = float(value)
    return found


def grpc_labels(service: str, method: str, grpc_type: str = "UNARY", code: str | None = None) -> str:
    code_label = f'grpc_code="{code}",' if code is not None else ""
    return f'{{{code_label}grpc_method="{method}",grpc_service="{service}",grpc_type="{grpc_type}"}}'


def records(server, message: str) -> list[dict]:
    found = []
    for text_line in list(server.log_lines):
        if text_line.startswith("{"):
            record = json.loads(text_line)
            if record.get("msg") == message:
                found.append(record)
    return found


def wait_for_workers(server, count: int) -> list[dict]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(records(server, "serving")) < count:
        assert time.monotonic() < deadline, "".join(server.log_lines)
        time.sleep(0.05)
    return records(server, "serving")


def rss_bytes(pid: int) -> int:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * 4096


def multiprocess_directory(pid: int) -> Path:
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    environ = dict(item.split(b"=", 1) for item in variables if b"=" in item)
    return Path(environ[b"PROMETHEUS_MULTIPROC_DIR"].decode())


class Terminal:
    """A POS on a connection of its own (a local subchannel pool: no connection shared with others)."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.processing = processing_pb2_grpc.ProcessingStub(self.channel)
        self.accounts = accounts_pb2_grpc.AccountsStub(self.channel)


def shop(address: str, index: int) -> None:
    terminal = Terminal(address)
    try:
        open_account(terminal, f"T-{index}")
        for n in range(PURCHASES_PER_TERMINAL):
            earn(terminal, f"T-{index}", 100, request_id=f"t{index}/buy-{n}")
    finally:
        terminal.channel.close()


def purchase_event(n: int) -> processing_pb2.Event:
    return processing_pb2.Event(event_id=f"e/{n}", purchase=processing_pb2.AccrueRequest(
        customer=by_account("T-0"), receipt=receipt(line(1, 1_000), receipt_no=f"e/{n}")))


def batch_operations() -> list[processing_pb2.Operation]:
    accrue = [processing_pb2.Operation(accrue=processing_pb2.AccrueRequest(
        request_id=f"b/{n}", customer=by_account("T-1"), receipt=receipt(line(1, 500), receipt_no=f"b/{n}")))
        for n in range(4)]
    return [*accrue, processing_pb2.Operation()]  # the last sets no operation: INVALID_ARGUMENT


@pytest.fixture(scope="class")
def loaded(tmp_path_factory):
    """A 2-worker server after a short load from TERMINALS connections at once, one event stream,
    one batch and one call to a method no service has: (server, metrics address, its scrape)."""
    from tests.kassa_harness import KassaServer

    metrics_address = f"127.0.0.1:{free_port()}"
    server = KassaServer(tmp_path_factory.mktemp("metrics"), env={
        "KASSA_SERVER_WORKERS": str(WORKERS),
        "KASSA_SERVER_LISTEN": f"127.0.0.1:{free_port()}",
        "KASSA_SERVER_PIN_WORKERS": "false",
        "KASSA_METRICS_LISTEN": metrics_address,
    }).start()
    try:
        server.workers = wait_for_workers(server, WORKERS)
        terminals = [threading.Thread(target=shop, args=(server.address, index)) for index in range(TERMINALS)]
        for terminal in terminals:
            terminal.start()
        for terminal in terminals:
            terminal.join()
        events = [purchase_event(n) for n in range(EVENTS)]
        size = EVENTS // EVENT_BATCHES
        messages = [processing_pb2.EventBatch(events=events[start:start + size]) for start in range(0, EVENTS, size)]
        acks = [ack for batch in server.processing.StreamEvents(iter(messages), timeout=60) for ack in batch.acks]
        assert len(acks) == EVENTS
        results = server.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=batch_operations()))
        assert len(results.results) == 5
        unknown = server.channel().unary_unary("/kassa.v1.Processing/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as caught:
            unknown(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        yield server, metrics_address, scrape(metrics_address)
    finally:
        server.stop()


class TestOneScrapeOfTheWholeServer:
    def test_every_metric_has_help_and_type(self, loaded):
        _, _, text = loaded
        helped = set(re.findall(r"^# HELP (\w+) ", text, re.M))
        typed = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
        assert helped == set(typed)
        names = {name for name in re.findall(r"^(\w+)[{ ]", text, re.M)}
        assert len(names) > 20
        for name in names:
            family = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert name in typed or family in typed, name
        assert typed["grpc_server_handled_total"] == "counter"
        assert typed["grpc_server_handling_seconds"] == "histogram"
        assert typed["kassa_streams_open"] == "gauge"

    def test_process_metrics_are_the_whole_servers(self, loaded):
        server, _, text = loaded
        found = samples(text)
        assert found["kassa_workers"] == WORKERS
        assert found["process_cpu_seconds_total"] > 0
        assert found["process_max_fds"] > 0
        # The workers' memory is in it, not only the supervisor's (each worker alone is larger).
        pids = [server.process.pid, *(record["pid"] for record in server.workers)]
        assert found["process_resident_memory_bytes"] > 0.8 * sum(rss_bytes(pid) for pid in pids)
        assert found["process_resident_memory_bytes"] > rss_bytes(server.process.pid) + min(
            rss_bytes(record["pid"]) for record in server.workers)

    def test_calls_are_summed_over_the_workers(self, loaded):
        _, _, text = loaded
        found = samples(text)
        accrued = TERMINALS * PURCHASES_PER_TERMINAL
        accrue = ("kassa.v1.Processing", "Accrue")
        assert found["grpc_server_handled_total" + grpc_labels(*accrue, code="OK")] == accrued
        assert found["grpc_server_started_total" + grpc_labels(*accrue)] == accrued
        assert found["grpc_server_handling_seconds_count" + grpc_labels(*accrue)] == accrued
        created = grpc_labels("kassa.v1.Accounts", "CreateAccount", code="OK")
        assert found["grpc_server_handled_total" + created] == TERMINALS
        stream = ("kassa.v1.Processing", "StreamEvents", "BIDI_STREAM")
        assert found["grpc_server_handled_total" + grpc_labels(*stream, code="OK")] == 1
        unknown = '{grpc_code="UNIMPLEMENTED",grpc_method="unknown",grpc_service="unknown",grpc_type="unknown"}'
        assert found["grpc_server_handled_total" + unknown] == 1

    def test_events_and_batch_operations_are_counted_by_outcome(self, loaded):
        _, _, text = loaded
        found = samples(text)
        assert found['kassa_operations_total{code="OK",grpc_method="StreamEvents",kind="accrue"}'] == EVENTS
        assert found['kassa_operations_total{code="OK",grpc_method="ProcessBatch",kind="accrue"}'] == 4
        assert found['kassa_operations_total{code="INVALID_ARGUMENT",grpc_method="ProcessBatch",kind="unset"}'] == 1
        committed = TERMINALS * (1 + PURCHASES_PER_TERMINAL) + EVENTS + 4
        assert found["kassa_commit_operations_sum"] == committed

    def test_the_example_alerts_use_names_the_server_serves(self, loaded):
        _, _, text = loaded
        served = set(re.findall(r"^(\w+)[{ ]", text, re.M))
        named = set(METRIC_NAME.findall(ALERTS.read_text()))
        assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "kassa_ledger_bytes"} <= named
        assert named - served == set()

    @pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
    def test_promtool_accepts_the_scrape_and_the_example_alerts(self, loaded):
        _, _, text = loaded
        checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout + checked.stderr == ""  # no lint remarks either
        checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    def test_kassa_stats_shows_the_totals(self, loaded):
        server, _, _ = loaded
        result = server.run_cli("stats", "--config", str(server.config_path()))
        assert result.returncode == 0, result.stderr
        printed = {}
        for text_line in result.stdout.splitlines():
            label, _, value = text_line.rstrip().rpartition(" ")
            printed[" ".join(label.split())] = float(value.replace(",", ""))
        assert printed["workers"] == WORKERS
        assert printed["kassa.v1.Processing/Accrue OK"] == TERMINALS * PURCHASES_PER_TERMINAL
        assert printed["StreamEvents accrue OK"] == EVENTS
        assert printed["batch and stream operations"] == EVENTS + 5

    def test_both_workers_served_what_was_counted(self, loaded):
        """The sums above are sums: every worker took part (its own count is in its stop line).
        Stops the server: the last test of the class."""
        server, address, _ = loaded
        deadline = time.monotonic() + GAUGE_WAIT_S
        while samples(scrape(address))["kassa_accounts"] != TERMINALS:
            assert time.monotonic() < deadline, "kassa_accounts never showed the accounts"
            time.sleep(0.2)
        assert samples(scrape(address))['kassa_build_info{version="0.1.0"}'] == 1
        directories = {multiprocess_directory(record["pid"]) for record in server.workers}
        assert len(directories) == 1  # one for all the workers
        directory = directories.pop()
        assert directory.is_dir()
        server.stop()
        stopped = records(server, "stopped")
        assert len(stopped) == WORKERS
        assert all(record["ops_committed"] > 0 for record in stopped), stopped
        assert not directory.exists()  # the supervisor removes it as it ends


def holder(address: str) -> socket.socket:
    """A listener on `address` as another server would hold it (SO_REUSEPORT, as kassa's gRPC port)."""
    host, port = address.rsplit(":", 1)
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    taken.bind((host, int(port)))
    taken.listen()
    return taken


class TestAWorkerThatDies:
    def test_the_scrape_goes_on_with_the_workers_left(self, start_kassa):
        metrics_address = f"127.0.0.1:{free_port()}"
        server = start_kassa(env={
            "KASSA_SERVER_WORKERS": str(WORKERS), "KASSA_SERVER_PIN_WORKERS": "false",
            "KASSA_SERVER_LISTEN": f"127.0.0.1:{free_port()}", "KASSA_METRICS_LISTEN": metrics_address,
        })
        workers = wait_for_workers(server, WORKERS)
        open_account(server, "D-1")
        assert samples(scrape(metrics_address))["kassa_workers"] == WORKERS
        os.kill(workers[0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while Path(f"/proc/{workers[0]['pid']}/stat").exists() and " Z " not in Path(
                f"/proc/{workers[0]['pid']}/stat").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        found = samples(scrape(metrics_address))
        assert found["kassa_workers"] == WORKERS - 1
        assert found["kassa_streams_open"] == 0
        handled = "grpc_server_handled_total" + grpc_labels("kassa.v1.Accounts", "CreateAccount", code="OK")
        assert found[handled] == 1  # what the dead worker counted is not lost


class TestRefusedAtStart:
    @pytest.mark.parametrize("workers", [1, WORKERS])
    def test_a_metrics_address_in_use_is_refused_in_one_line(self, start_kassa, workers):
        address = f"127.0.0.1:{free_port()}"
        with holder(address):
            with pytest.raises(RuntimeError) as caught:
                start_kassa(env={"KASSA_SERVER_WORKERS": str(workers), "KASSA_SERVER_PIN_WORKERS": "false",
                                 "KASSA_SERVER_LISTEN": f"127.0.0.1:{free_port()}", "KASSA_METRICS_LISTEN": address})
        printed = str(caught.value).split("\n", 1)[1]
        assert printed.splitlines() == [f"kassa: {address} is in use by another process"]
        assert "exited" in str(caught.value)

    @pytest.mark.parametrize("workers", [1, WORKERS])
    def test_a_metrics_address_that_is_not_host_port_is_refused_in_one_line(self, tmp_path, workers):
        from tests.kassa_harness import KassaServer

        server = KassaServer(tmp_path, env={"KASSA_SERVER_WORKERS": str(workers), "KASSA_METRICS_LISTEN": "localhost"})
        result = server.run_cli("serve", "--config", str(server.config_path()))
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("kassa: ")
        assert "metrics.listen" in result.stderr
        assert "localhost" in result.stderr


class TestStatsWithoutAnEndpoint:
    def test_an_endpoint_that_does_not_answer_is_said_in_one_line(self, tmp_path):
        from tests.kassa_harness import KassaServer

        address = f"127.0.0.1:{free_port()}"  # nothing listens there
        server = KassaServer(tmp_path, env={"KASSA_METRICS_LISTEN": address})
        result = server.run_cli("stats", "--config", str(server.config_path()))
        assert result.returncode == 1
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert f"http://{address}/metrics" in result.stderr
        assert "connection refused" in result.stderr.lower()
        assert "urlopen error" not in result.stderr
