"""A client frozen mid-stream (SIGSTOP: its process stops, its kernel still holds the connection open)
loses its streams once a keepalive ping goes unanswered for `server.keepalive_timeout_s`, as the
config says; grpc's own ping timeout (a minute) does not keep them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

from tests.kassa_harness import REPO
from tests.server.helpers import open_account

KEEPALIVE_S = 1
KEEPALIVE_TIMEOUT_S = 1
# After the freeze: the next ping is due within KEEPALIVE_S, is unanswered after KEEPALIVE_TIMEOUT_S;
# then the transport closes, the stream's handler ends and the gauge is refreshed.
DROP_SLACK_S = 4
CLIENT_START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def streams_open(metrics_address: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as reply:
        for text_line in reply.read().decode().splitlines():
            if text_line.startswith("kassa_streams_open"):
                return float(text_line.rpartition(" ")[2])
    raise AssertionError("no kassa_streams_open gauge in /metrics")


def wait_for_streams(metrics_address: str, count: int, timeout_s: float) -> None:
    """Until the server counts `count` open streams; fails past `timeout_s`."""
    started_at = time.monotonic()
    while (now_open := streams_open(metrics_address)) != count:
        assert time.monotonic() - started_at < timeout_s, f"{now_open:.0f} streams open {timeout_s}s on, not {count}"
        time.sleep(0.1)


class TestFrozenClient:
    def test_a_frozen_clients_stream_ends_within_the_keepalive_settings(self, start_kassa):
        metrics_address = f"127.0.0.1:{free_port()}"
        server = start_kassa(env={
            "KASSA_METRICS_LISTEN": metrics_address,
            "KASSA_SERVER_KEEPALIVE_S": str(KEEPALIVE_S),
            "KASSA_SERVER_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_TIMEOUT_S),
        })
        open_account(server, "A-1")
        client = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.stream_client", server.address, "A-1"],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert client.stdout.readline().strip() == "acked"
            wait_for_streams(metrics_address, 1, CLIENT_START_TIMEOUT_S)

            client.send_signal(signal.SIGSTOP)
            wait_for_streams(metrics_address, 0, KEEPALIVE_S + KEEPALIVE_TIMEOUT_S + DROP_SLACK_S)
        finally:
            client.kill()  # also ends a stopped process
            client.wait()
            client.stdout.close()
