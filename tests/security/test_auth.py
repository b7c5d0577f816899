"""API keys: who may call, for which stores, and who is written into the journal.

One server with auth on and two keys: a terminal key scoped to store-1 and an admin key for every
store. Refused calls change nothing, leave no idempotency record, and the ledger still verifies.
"""

from __future__ import annotations

import hashlib
import json
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kassa.v1 import (
    accounts_pb2, accounts_pb2_grpc, admin_pb2, admin_pb2_grpc, common_pb2, processing_pb2, processing_pb2_grpc,
)
from tests.kassa_harness import KassaServer
from tests.server.helpers import (
    accrue, balance, by_account, earn, line, open_account, receipt, refused, snapshot, statement,
)

TERMINAL_KEY = "k-terminal-7f3a9c0e5b"
TERMINAL_NAME = "store-1/pos-1"
ADMIN_KEY = "k-admin-2d8e41b6aa"
ADMIN_NAME = "ops/alice"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


AUTH_CONFIG = f"""
[auth]
enabled = true

[[auth.keys]]
key_sha256 = "{sha256(TERMINAL_KEY)}"
name = "{TERMINAL_NAME}"
stores = ["store-1"]

[[auth.keys]]
key_sha256 = "{sha256(ADMIN_KEY)}"
name = "{ADMIN_NAME}"
admin = true
"""


class _Keyed:
    """A stub whose every call carries `metadata`."""

    def __init__(self, stub, metadata):
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name):
        method = getattr(self._stub, name)

        def call(request, **options):
            return method(request, metadata=self._metadata, **options)

        return call


class Client:
    """What the helpers expect of `kassa` (.processing, .accounts, .admin), on a channel of its own,
    sending `key` in x-api-key (None: no key at all)."""

    def __init__(self, address: str, key: str | None):
        self.channel = grpc.insecure_channel(address)
        self.metadata = (("x-api-key", key),) if key is not None else ()
        self.processing = _Keyed(processing_pb2_grpc.ProcessingStub(self.channel), self.metadata)
        self.accounts = _Keyed(accounts_pb2_grpc.AccountsStub(self.channel), self.metadata)
        self.admin = _Keyed(admin_pb2_grpc.AdminStub(self.channel), self.metadata)

    def close(self):
        self.channel.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    kassa = KassaServer(tmp_path_factory.mktemp("auth"), config_text=AUTH_CONFIG).start()
    yield kassa
    kassa.stop()


@pytest.fixture(scope="module")
def clients(server):
    made = {
        "terminal": Client(server.address, TERMINAL_KEY),
        "admin": Client(server.address, ADMIN_KEY),
        "none": Client(server.address, None),
        "unknown": Client(server.address, "k-nobody-0000"),
        # the admin key's digest sent as if it were the key: the config's hashes are not keys
        "digest": Client(server.address, sha256(ADMIN_KEY)),
    }
    yield made
    for client in made.values():
        client.close()


@pytest.fixture
def terminal(clients):
    return clients["terminal"]


@pytest.fixture
def admin(clients):
    return clients["admin"]


def buy(request_id: str, account_id: str, price_minor: int, store_id: str = "store-1") -> processing_pb2.AccrueRequest:
    return processing_pb2.AccrueRequest(
        request_id=request_id, customer=by_account(account_id),
        receipt=receipt(line(1, price_minor), receipt_no=request_id, store_id=store_id),
    )


def spend(request_id: str, account_id: str, points: int, store_id: str = "store-1") -> processing_pb2.RedeemRequest:
    return processing_pb2.RedeemRequest(
        request_id=request_id, customer=by_account(account_id), points=points, receipt_total_minor=10**9,
        mode=processing_pb2.REDEEM_MODE_IMMEDIATE, store_id=store_id,
    )


def stats(admin) -> admin_pb2.GetStatsResponse:
    return admin.admin.GetStats(admin_pb2.GetStatsRequest())


def assert_verifies(server):
    result = server.run_cli("verify", "--config", str(server.config_path()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is True


def entry(admin, account_id: str, request_id: str) -> accounts_pb2.Transaction:
    (found,) = [t for t in statement(admin, account_id) if t.request_id == request_id]
    return found


class TestUnauthenticated:
    @pytest.mark.parametrize("who", ["none", "unknown", "digest"])
    def test_every_kassa_rpc_is_refused_and_nothing_changes(self, server, clients, admin, terminal, who):
        caller = clients[who]
        account = f"U-{who}"
        open_account(admin, account)
        earn(terminal, account, 500, request_id=f"u-{who}/seed")
        before, stats_before = snapshot(admin, account), stats(admin)

        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        with refused(unauthenticated) as refusal:
            caller.processing.Accrue(buy(f"u-{who}/buy", account, 10_000))
        assert "x-api-key" in refusal.details
        with refused(unauthenticated):
            caller.processing.Redeem(spend(f"u-{who}/spend", account, 100))
        with refused(unauthenticated):
            caller.processing.Rollback(processing_pb2.RollbackRequest(
                request_id=f"u-{who}/cancel", original_request_id=f"u-{who}/seed", store_id="store-1"))
        with refused(unauthenticated):
            caller.processing.Calculate(processing_pb2.CalculateRequest(
                customer=by_account(account), receipt=receipt(line(1, 10_000))))
        with refused(unauthenticated):
            caller.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(
                operations=[processing_pb2.Operation(accrue=buy(f"u-{who}/batch", account, 10_000))]))
        with refused(unauthenticated):
            events = processing_pb2.EventBatch(events=[processing_pb2.Event(
                event_id=f"u-{who}/event", purchase=buy("", account, 10_000))])
            list(caller.processing.StreamEvents(iter([events]), timeout=10))
        with refused(unauthenticated):
            caller.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(
                request_id=f"u-{who}/create", account_id=f"U-{who}-new"))
        with refused(unauthenticated):
            caller.accounts.GetBalance(accounts_pb2.GetBalanceRequest(customer=by_account(account)))
        with refused(unauthenticated):
            caller.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=by_account(account)))
        with refused(unauthenticated):
            caller.accounts.ListTransactions(accounts_pb2.ListTransactionsRequest(customer=by_account(account)))
        with refused(unauthenticated):
            caller.accounts.Adjust(accounts_pb2.AdjustRequest(
                request_id=f"u-{who}/adjust", customer=by_account(account), points=1_000, reason="x", operator_id="x"))
        with refused(unauthenticated):
            caller.admin.GetStats(admin_pb2.GetStatsRequest())

        assert snapshot(admin, account) == before
        after = stats(admin)
        assert (after.accounts, after.transactions) == (stats_before.accounts, stats_before.transactions)
        with refused(grpc.StatusCode.NOT_FOUND):
            balance(admin, f"U-{who}-new")
        assert_verifies(server)
        # No idempotency record was made: the same request_id with a key is a first call, not a replay.
        reply = terminal.processing.Accrue(buy(f"u-{who}/buy", account, 10_000))
        assert reply.calculation.earned_points == 500
        assert balance(admin, account).active_points == 1_000


class TestStoreScope:
    def test_foreign_store_is_refused_and_changes_nothing(self, server, admin, terminal):
        open_account(admin, "S-1")
        earn(terminal, "S-1", 400, request_id="s/seed")
        before, stats_before = snapshot(admin, "S-1"), stats(admin)

        with refused(grpc.StatusCode.PERMISSION_DENIED) as refusal:
            terminal.processing.Accrue(buy("s/buy-store-2", "S-1", 10_000, store_id="store-2"))
        assert "store-2" in refusal.details
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.processing.Calculate(processing_pb2.CalculateRequest(
                customer=by_account("S-1"), receipt=receipt(line(1, 10_000), store_id="store-2")))
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.processing.Redeem(spend("s/spend-store-2", "S-1", 100, store_id="store-2"))
        with refused(grpc.StatusCode.PERMISSION_DENIED) as refusal:  # a scoped key must name its store
            terminal.processing.Redeem(spend("s/spend-no-store", "S-1", 100, store_id=""))
        assert "store_id" in refusal.details
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.processing.Rollback(processing_pb2.RollbackRequest(
                request_id="s/cancel-store-2", original_request_id="s/seed", store_id="store-2"))

        assert snapshot(admin, "S-1") == before
        assert stats(admin).transactions == stats_before.transactions
        assert_verifies(server)
        # The refused request_id left no record: the admin key (every store) makes it for the first time.
        reply = admin.processing.Accrue(buy("s/buy-store-2", "S-1", 10_000, store_id="store-2"))
        assert reply.calculation.earned_points == 500
        assert balance(admin, "S-1").active_points == 900

    def test_own_store_works_and_the_journal_names_the_key(self, admin, terminal):
        open_account(admin, "S-2")
        bought = terminal.processing.Accrue(buy("s2/buy", "S-2", 10_000))
        assert bought.calculation.earned_points == 500
        assert terminal.processing.Calculate(processing_pb2.CalculateRequest(
            customer=by_account("S-2"), receipt=receipt(line(1, 10_000)))).calculation.earned_points == 500
        terminal.processing.Redeem(spend("s2/spend", "S-2", 100))
        terminal.processing.Rollback(processing_pb2.RollbackRequest(
            request_id="s2/cancel", transaction_id=bought.transaction_id, store_id="store-1"))
        # reads are not scoped to stores
        assert terminal.accounts.GetBalance(
            accounts_pb2.GetBalanceRequest(customer=by_account("S-2"))).account_id == "S-2"

        assert entry(admin, "S-2", "create/S-2").actor == ADMIN_NAME
        for request_id in ("s2/buy", "s2/spend", "s2/cancel"):
            assert entry(admin, "S-2", request_id).actor == TERMINAL_NAME, request_id
        # the terminal sees the same statement
        assert entry(terminal, "S-2", "s2/buy").actor == TERMINAL_NAME

    def test_account_calls_of_a_scoped_key_are_stamped_with_its_name(self, admin, terminal):
        terminal.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(request_id="s3/create", account_id="S-3"))
        terminal.accounts.IssueCard(accounts_pb2.IssueCardRequest(request_id="s3/card", account_id="S-3", card="C-S3"))
        terminal.accounts.SetAttributes(accounts_pb2.SetAttributesRequest(
            request_id="s3/attrs", customer=by_account("S-3"), tags=["new"]))
        terminal.accounts.BlockCard(accounts_pb2.BlockCardRequest(request_id="s3/block", card="C-S3"))
        actors = {t.request_id: t.actor for t in statement(admin, "S-3")}
        assert actors == dict.fromkeys(("s3/create", "s3/card", "s3/attrs", "s3/block"), TERMINAL_NAME)

    def test_a_scoped_key_cannot_undo_another_stores_transactions(self, server, admin, terminal):
        """The scope is the store of what is acted on: naming its own store in the Rollback request
        must not let a store-1 terminal cancel a store-2 purchase or void a store-2 hold."""
        open_account(admin, "S-4")
        admin.processing.Accrue(buy("s4/buy-store-2", "S-4", 20_000, store_id="store-2"))
        held = admin.processing.Redeem(processing_pb2.RedeemRequest(
            request_id="s4/hold-store-2", customer=by_account("S-4"), points=100, receipt_total_minor=10**9,
            mode=processing_pb2.REDEEM_MODE_HOLD, store_id="store-2"))
        before = snapshot(admin, "S-4")

        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.processing.Rollback(processing_pb2.RollbackRequest(
                request_id="s4/cancel", original_request_id="s4/buy-store-2", store_id="store-1"))
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.processing.Rollback(processing_pb2.RollbackRequest(
                request_id="s4/void", transaction_id=held.transaction_id, store_id="store-1"))
        assert snapshot(admin, "S-4") == before


class TestAdminRights:
    def test_admin_rpcs_and_adjust_need_an_admin_key(self, admin, terminal):
        open_account(admin, "D-1")
        before = snapshot(admin, "D-1")
        adjust = accounts_pb2.AdjustRequest(
            request_id="d/adjust", customer=by_account("D-1"), points=700, reason="goodwill", operator_id="alice")

        with refused(grpc.StatusCode.PERMISSION_DENIED) as refusal:
            terminal.admin.GetStats(admin_pb2.GetStatsRequest())
        assert TERMINAL_NAME in refusal.details
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.accounts.Adjust(adjust)
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.admin.GetRules(admin_pb2.GetRulesRequest())
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.admin.ReloadRules(admin_pb2.ReloadRulesRequest())
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.admin.ExpirePoints(admin_pb2.ExpirePointsRequest())
        assert snapshot(admin, "D-1") == before

        assert stats(admin).accounts >= 1
        assert admin.admin.GetRules(admin_pb2.GetRulesRequest()).ruleset_version
        adjusted = admin.accounts.Adjust(adjust)
        assert adjusted.balance.active_points == 700
        made = entry(admin, "D-1", "d/adjust")
        assert made.kind == accounts_pb2.TRANSACTION_KIND_ADJUST
        assert (made.actor, made.operator_id, made.adjusted_points) == (ADMIN_NAME, "alice", 700)


class TestAccessLog:
    def test_refusals_are_logged_with_their_request_id_and_never_the_key(self, server, clients, terminal):
        with refused(grpc.StatusCode.UNAUTHENTICATED):
            clients["unknown"].processing.Accrue(buy("log/unknown-key", "L-1", 1_000))
        with refused(grpc.StatusCode.PERMISSION_DENIED):
            terminal.processing.Accrue(buy("log/foreign-store", "L-1", 1_000, store_id="store-2"))
        wanted = {"log/unknown-key": "UNAUTHENTICATED", "log/foreign-store": "PERMISSION_DENIED"}
        deadline = time.monotonic() + 5
        while True:
            records = [json.loads(text) for text in list(server.log_lines) if text.startswith("{")]
            logged = {r.get("request_id"): r for r in records if r.get("msg") == "refused"}
            if set(wanted) <= set(logged) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert {key: logged.get(key, {}).get("code") for key in wanted} == wanted
        assert logged["log/unknown-key"]["method"] == "/kassa.v1.Processing/Accrue"
        text = "".join(server.log_lines)
        for key in (TERMINAL_KEY, ADMIN_KEY, "k-nobody-0000"):
            assert key not in text


class TestOpenServices:
    def test_health_and_reflection_need_no_key(self, clients):
        channel = clients["none"].channel
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="kassa.v1.Processing")).status == \
            health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {service.name for service in reply.list_services_response.service}
        assert {"kassa.v1.Processing", "kassa.v1.Accounts", "kassa.v1.Admin"} <= names
        (reply,) = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="kassa.v1.Processing")]))
        assert reply.file_descriptor_response.file_descriptor_proto


class TestManyOperations:
    def test_batch_refuses_only_the_foreign_store_operations(self, admin, terminal):
        open_account(admin, "B-1")
        earn(terminal, "B-1", 1_000, request_id="b/seed")
        Op = processing_pb2.Operation
        results = terminal.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=[
            Op(accrue=buy("b/buy-1", "B-1", 10_000)),                        # 0 OK, 500
            Op(accrue=buy("b/buy-foreign", "B-1", 20_000, store_id="store-2")),  # 1 denied
            Op(redeem=spend("b/spend-1", "B-1", 300)),                       # 2 OK
            Op(redeem=spend("b/spend-foreign", "B-1", 300, store_id="store-2")),  # 3 denied
            Op(redeem=spend("b/spend-no-store", "B-1", 300, store_id="")),   # 4 denied: no store
            Op(rollback=processing_pb2.RollbackRequest(                      # 5 denied
                request_id="b/cancel-foreign", original_request_id="b/seed", store_id="store-2")),
            Op(accrue=buy("b/buy-2", "B-1", 4_000)),                          # 6 OK, 200
        ])).results
        codes = [common_pb2.Code.Name(result.code) for result in results]
        denied = "CODE_PERMISSION_DENIED"
        assert codes == ["CODE_OK", denied, "CODE_OK", denied, denied, denied, "CODE_OK"]
        assert "store-2" in results[1].message and "store-2" in results[3].message
        assert results[6].accrue.balance.active_points == 1_000 + 500 - 300 + 200
        assert balance(admin, "B-1").active_points == 1_400
        made = {t.request_id: t.actor for t in statement(admin, "B-1")}
        assert {"b/buy-foreign", "b/spend-foreign", "b/spend-no-store", "b/cancel-foreign"}.isdisjoint(made)
        assert made["b/buy-1"] == made["b/spend-1"] == made["b/buy-2"] == TERMINAL_NAME

    def test_stream_acks_a_foreign_store_event_permission_denied(self, admin, terminal):
        open_account(admin, "E-1")
        events = processing_pb2.EventBatch(events=[
            processing_pb2.Event(event_id="e/buy-1", purchase=buy("", "E-1", 10_000)),
            processing_pb2.Event(event_id="e/buy-foreign", purchase=buy("", "E-1", 10_000, store_id="store-2")),
            processing_pb2.Event(event_id="e/buy-2", purchase=buy("", "E-1", 2_000)),
        ])
        acks = [ack for batch in terminal.processing.StreamEvents(iter([events]), timeout=30) for ack in batch.acks]
        assert [(ack.event_id, common_pb2.Code.Name(ack.code)) for ack in acks] == [
            ("e/buy-1", "CODE_OK"), ("e/buy-foreign", "CODE_PERMISSION_DENIED"), ("e/buy-2", "CODE_OK")]
        assert balance(admin, "E-1").active_points == 600
        made = {t.request_id: t.actor for t in statement(admin, "E-1")}
        assert made["e/buy-1"] == made["e/buy-2"] == TERMINAL_NAME
        assert "e/buy-foreign" not in made
