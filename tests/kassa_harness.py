"""A real kassa server process for tests: temp LMDB, a clock the test controls, a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from kassa.v1 import accounts_pb2_grpc, admin_pb2_grpc, processing_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30  # seconds for a server to say it is serving
STOP_TIMEOUT_S = 30  # seconds for a server to exit after SIGTERM
T0_MS = 1_780_300_800_000  # 2026-06-01T08:00:00Z: the tests' clock starts here
DAY_MS = 86_400_000


class Clock:
    """The server's "now", in a file the server reads on every request."""

    def __init__(self, path: Path, start_ms: int = T0_MS):
        self.path = path
        self.set(start_ms)

    def set(self, now_ms: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(now_ms))
        os.replace(tmp, self.path)
        self.now_ms = now_ms

    def advance(self, seconds: float = 0, days: float = 0) -> None:
        self.set(self.now_ms + int(seconds * 1000) + int(days * DAY_MS))


class KassaServer:
    def __init__(
        self, workdir: Path, rules: Path | None = None, env: dict[str, str] | None = None, config_text: str | None = None
    ):
        self.workdir = workdir
        self.ledger_path = workdir / "ledger"
        self.clock = Clock(workdir / "clock")
        self.rules = rules or REPO / "config" / "rules"
        self.extra_env = env or {}
        self.config_text = config_text  # a config file of the test's own instead of config/kassa.toml
        self.process: subprocess.Popen | None = None
        self.address = ""
        self.log_lines: list[str] = []
        self._channel: grpc.Channel | None = None
        self._channel_address = ""  # the address self._channel connects to
        self._drainer: threading.Thread | None = None

    @property
    def environ(self) -> dict[str, str]:
        return {
            **os.environ,
            "KASSA_SERVER_LISTEN": self.address or "127.0.0.1:0",
            "KASSA_SERVER_WORKERS": "1",
            "KASSA_LEDGER_PATH": str(self.ledger_path),
            "KASSA_LEDGER_MAP_SIZE_BYTES": str(256 * 1024 * 1024),
            "KASSA_RULES_PATHS": str(self.rules),
            "KASSA_CLOCK_FILE": str(self.clock.path),
            **self.extra_env,
        }

    def config_path(self) -> Path:
        if self.config_text is None:
            return REPO / "config" / "kassa.toml"
        path = self.workdir / "kassa.toml"
        path.write_text(self.config_text)
        return path

    def start(self) -> "KassaServer":
        command = [sys.executable, "-m", "kassa.server.cli", "serve", "--config", str(self.config_path())]
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=self.environ, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                self._reap()
                raise RuntimeError(f"kassa exited before serving:\n{''.join(self.log_lines)}")
            self.log_lines.append(line)
            if '"msg":"serving"' in line:
                self.address = json.loads(line)["address"]
                self._drainer = threading.Thread(target=self._drain_log, daemon=True)
                self._drainer.start()
                return self
        raise RuntimeError(f"kassa did not serve within {START_TIMEOUT_S}s:\n{''.join(self.log_lines)}")

    def _drain_log(self) -> None:
        for line in self.process.stderr:
            self.log_lines.append(line)

    def _reap(self) -> int:
        code = self.process.wait(STOP_TIMEOUT_S)
        if self._drainer is not None:
            self._drainer.join(STOP_TIMEOUT_S)
            self._drainer = None
        self.process.stderr.close()
        return code

    def channel(self) -> grpc.Channel:
        """A channel to the server's current address. A server started again on port 0 has a new
        one: a channel made for the old address (by a client thread that raced `kill9`, say) would
        keep calling a port nothing listens on, so it is replaced, never reused."""
        if self._channel is None or self._channel_address != self.address:
            self._close_channel()
            self._channel = grpc.insecure_channel(self.address)
            self._channel_address = self.address
        return self._channel

    @property
    def processing(self) -> processing_pb2_grpc.ProcessingStub:
        return processing_pb2_grpc.ProcessingStub(self.channel())

    @property
    def accounts(self) -> accounts_pb2_grpc.AccountsStub:
        return accounts_pb2_grpc.AccountsStub(self.channel())

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel())

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stop(self) -> int:
        """SIGTERM and wait: the graceful path."""
        self._close_channel()
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self._reap()

    def kill9(self) -> None:
        self._close_channel()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self._reap()

    def restart(self) -> "KassaServer":
        """Stop and start again on the same port, ledger and clock."""
        self.stop()
        return self.start()

    def run_cli(self, *args: str) -> subprocess.CompletedProcess:
        """`kassa ARGS` against this server's config and ledger."""
        command = [sys.executable, "-m", "kassa.server.cli", *args]
        return subprocess.run(command, cwd=self.workdir, env=self.environ, capture_output=True, text=True, timeout=120)
