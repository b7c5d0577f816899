"""A rollback that arrives before its original (a tombstone) cancels only what its key could have
rolled back: an original of one of the key's stores. Auth on, two keys scoped to one store each and
an admin key for every store.
"""

from __future__ import annotations

import grpc
import msgspec
import pytest

from kassa.core_ext import records
from kassa.v1 import processing_pb2
from tests.kassa_harness import KassaServer
from tests.security.test_auth import Client, assert_verifies, sha256
from tests.server.helpers import balance, by_account, line, open_account, receipt, refused

STORE_1_KEY = "k-store-1-5e0c2a9d41"
STORE_2_KEY = "k-store-2-b7d1f03c6e"
ADMIN_KEY = "k-admin-90a4c7e2d3"

AUTH_CONFIG = f"""
[auth]
enabled = true

[[auth.keys]]
key_sha256 = "{sha256(STORE_1_KEY)}"
name = "store-1/pos-1"
stores = ["store-1"]

[[auth.keys]]
key_sha256 = "{sha256(STORE_2_KEY)}"
name = "store-2/pos-1"
stores = ["store-2"]

[[auth.keys]]
key_sha256 = "{sha256(ADMIN_KEY)}"
name = "ops/alice"
admin = true
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    kassa = KassaServer(tmp_path_factory.mktemp("tombstones"), config_text=AUTH_CONFIG).start()
    yield kassa
    kassa.stop()


@pytest.fixture(scope="module")
def keys(server):
    made = {"store-1": Client(server.address, STORE_1_KEY), "store-2": Client(server.address, STORE_2_KEY),
            "admin": Client(server.address, ADMIN_KEY)}
    yield made
    for client in made.values():
        client.close()


def buy(client, request_id: str, account_id: str, store_id: str) -> processing_pb2.AccrueResponse:
    """A 200.00 purchase at `store_id`: 1,000 points at the base 5 %."""
    return client.processing.Accrue(processing_pb2.AccrueRequest(
        request_id=request_id, customer=by_account(account_id),
        receipt=receipt(line(1, 20_000), receipt_no=request_id, store_id=store_id)))


def cancel_ahead(client, request_id: str, original_request_id: str, store_id: str) -> processing_pb2.RollbackResponse:
    return client.processing.Rollback(processing_pb2.RollbackRequest(
        request_id=request_id, original_request_id=original_request_id, store_id=store_id))


class TestTombstoneStores:
    def test_another_stores_tombstone_does_not_cancel_its_purchase(self, server, keys):
        open_account(keys["admin"], "T-1")
        ahead = cancel_ahead(keys["store-1"], "t1/cancel", "store-2/R-1", store_id="store-1")
        assert ahead.transaction_id == 0  # recorded, as any rollback before its original

        bought = buy(keys["store-2"], "store-2/R-1", "T-1", store_id="store-2")

        assert bought.calculation.earned_points == 1_000
        assert balance(keys["admin"], "T-1").active_points == 1_000
        again = buy(keys["store-2"], "store-2/R-1", "T-1", store_id="store-2")  # a retry replays it
        assert again.SerializeToString(deterministic=True) == bought.SerializeToString(deterministic=True)
        assert_verifies(server)

    def test_a_tombstone_still_cancels_its_own_stores_late_original(self, keys):
        open_account(keys["admin"], "T-2")
        cancel_ahead(keys["store-1"], "t2/cancel", "store-1/R-2", store_id="store-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ROLLED_BACK_BEFORE_ARRIVAL"):
            buy(keys["store-1"], "store-1/R-2", "T-2", store_id="store-1")
        assert balance(keys["admin"], "T-2").active_points == 0

    def test_the_other_store_can_still_cancel_its_own_purchase_ahead(self, keys):
        """Store 1 wrote a tombstone first; store 2's own rollback of the same request id widens it
        rather than being refused, so that a key cannot block another store's cancel ahead."""
        open_account(keys["admin"], "T-3")
        cancel_ahead(keys["store-1"], "t3/cancel-1", "shared/R-3", store_id="store-1")

        cancel_ahead(keys["store-2"], "t3/cancel-2", "shared/R-3", store_id="store-2")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ROLLED_BACK_BEFORE_ARRIVAL"):
            buy(keys["store-2"], "shared/R-3", "T-3", store_id="store-2")
        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ROLLED_BACK_BEFORE_ARRIVAL"):
            buy(keys["store-1"], "shared/R-3", "T-3", store_id="store-1")

    def test_an_unscoped_keys_tombstone_cancels_an_original_of_any_store(self, keys):
        open_account(keys["admin"], "T-4")
        cancel_ahead(keys["admin"], "t4/cancel", "store-2/R-4", store_id="store-1")

        with refused(grpc.StatusCode.FAILED_PRECONDITION, "ROLLED_BACK_BEFORE_ARRIVAL"):
            buy(keys["store-2"], "store-2/R-4", "T-4", store_id="store-2")


def test_a_tombstone_of_an_older_ledger_reads_as_one_for_any_store():
    """Ledgers written before tombstones kept their stores hold [digest, txn_id, outcome]: it reads
    as a tombstone with no stores, which cancels an original of any store (as it did then)."""
    older = msgspec.msgpack.encode([b"", 0, b""])

    record = records.decode_idempotency(older)

    assert record.digest == b""
    assert record.stores == []
