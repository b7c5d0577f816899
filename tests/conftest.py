from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.kassa_harness import REPO, KassaServer


def pytest_sessionstart(session):
    """The tests must run this tree's code. kassa/ in the tree links kassa.server to server/; if it is
    missing, an editable install of another checkout would answer `import kassa.server` instead."""
    rebuild = f"run `make build` (or `python setup.py build_proto`) in {REPO}"
    try:
        imported = Path(importlib.import_module("kassa.server").__file__).resolve()
    except ImportError as error:
        pytest.exit(f"cannot import kassa.server ({error}): {rebuild}", returncode=4)
    if not imported.is_relative_to(REPO):
        pytest.exit(f"kassa.server comes from {imported.parent}, not from {REPO}: {rebuild}", returncode=4)


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
