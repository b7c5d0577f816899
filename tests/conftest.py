from __future__ import annotations

import pytest

from tests.kassa_harness import KassaServer


@pytest.fixture
def kassa(tmp_path):
    """A running kassa server on a free loopback port, with its own ledger and clock."""
    server = KassaServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def start_kassa(tmp_path):
    """Start servers with custom rules or environment: `start_kassa(rules=..., env={...})`."""
    servers = []

    def start(**options) -> KassaServer:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = KassaServer(workdir, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
