"""Partitions (DESIGN §6) against a real server: P ledgers under ledger.path, shared counters in escrow.

- Races across partitions: 24 clients, their accounts spread over every partition, exhaust a campaign
  budget of 1,000 points (purchases that ask 7 each) and a promo code good for 100 uses at once. At
  P = 1, 2 and 8 nothing is ever overspent, and once purchases go on in every partition until none
  gets anything, exactly 1,000 points and exactly 100 uses were granted (the last purchase of the
  budget gets the 6 that are left). `kassa verify` checks every partition and that each counter's
  bank and slices sum to its cap.
- Transaction ids carry their partition; a Rollback by transaction id and by request id reaches the
  purchase in whichever partition it is; a Rollback of a purchase that has not arrived leaves a
  tombstone that refuses it in its partition.
- The slack of a partition that sees no purchases goes back to the emptied bank within a second,
  and a purchase in another partition gets it.
- `kassa backup` of a partitioned ledger is one directory that serves again and verifies.
No timings are asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import lmdb
import pytest

from kassa.core_ext.ledger import MAX_DBS
from kassa.core_ext.partitions import PARTITION_SHIFT_BITS, home_partition
from kassa.server.app import ESCROW_RELEASE_INTERVAL_S
from kassa.v1 import accounts_pb2, admin_pb2, common_pb2, processing_pb2, processing_pb2_grpc
from tests.kassa_harness import START_TIMEOUT_S
from tests.reliability import CALL_TIMEOUT_S, assert_verifies
from tests.server.helpers import balance, by_account, line, open_account
from tests.server.test_limits_concurrency import free_port
from tests.server.test_retention import COMPACTION_INTERVAL_S, REPLAY_WINDOW_DAYS, compact_now

PROGRAM = """
[program]
name = "partitions"
timezone = "UTC"
points_lifetime_days = 365
"""

CAMPAIGNS = """
[[campaigns]]
id = "budget-7"
when = { category_prefixes = ["budget/"] }
effect = { kind = "earn_fixed", points = 7 }
limits = { budget_points = 1000 }

[[campaigns]]
id = "promo-5"
promo_code = true
when = { category_prefixes = ["promo/"] }
effect = { kind = "earn_fixed", points = 5 }
"""

BUDGET_POINTS = 1_000
CODE = "SHARED-100"
CODE_USES = 100
CLIENTS = 24
PURCHASES_PER_CLIENT = 7  # 168 purchases ask 1,176 points and 168 uses: more than there is
_serial = itertools.count(1)


def start_partitioned(start_kassa, tmp_path, partitions: int, workers: int = 1, env: dict | None = None):
    """A server on the test program; with 2 workers, two processes serve every partition."""
    rules = tmp_path / f"rules-{partitions}"
    rules.mkdir()
    (rules / "program.toml").write_text(PROGRAM)
    (rules / "campaigns.toml").write_text(CAMPAIGNS)
    env = {"KASSA_LEDGER_PARTITIONS": str(partitions), **(env or {})}
    if workers > 1:  # the workers share a fixed port (SO_REUSEPORT)
        env |= {"KASSA_SERVER_WORKERS": str(workers), "KASSA_SERVER_LISTEN": f"127.0.0.1:{free_port()}"}
    server = start_kassa(rules=rules, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while sum('"msg":"serving"' in entry for entry in list(server.log_lines)) < workers:
        assert time.monotonic() < deadline, "".join(server.log_lines)
        time.sleep(0.05)
    return server


def spread_accounts(prefix: str, partitions: int, count: int) -> list[str]:
    """`count` account ids placed evenly over the partitions (by the placement's hash)."""
    chosen: list[str] = []
    per_partition = {index: 0 for index in range(partitions)}
    for number in itertools.count():
        account_id = f"{prefix}-{number}"
        home = home_partition(account_id, partitions)
        if per_partition[home] < count // partitions:
            per_partition[home] += 1
            chosen.append(account_id)
        if len(chosen) == count:
            return chosen
    raise AssertionError("unreachable")


def purchase(account_id: str) -> processing_pb2.AccrueRequest:
    request_id = f"buy-{next(_serial)}"
    return processing_pb2.AccrueRequest(
        request_id=request_id, customer=by_account(account_id),
        receipt=common_pb2.Receipt(store_id="store-1", terminal_id="term-1", receipt_no=request_id,
                                   lines=[line(1, 1_000, category="budget/x"), line(2, 1_000, category="promo/x")],
                                   promo_codes=[CODE]))


def granted(reply, campaign_id: str) -> int:
    return sum(c.points for c in reply.calculation.campaigns if c.campaign_id == campaign_id)


def wave(server, plans: list[list]) -> list:
    """Each plan's purchases one after another on a channel of its own, all plans at once."""

    async def run():
        channels = [grpc.aio.insecure_channel(server.address) for _ in plans]
        try:
            async def client(channel, plan):
                stub = processing_pb2_grpc.ProcessingStub(channel)
                return [await stub.Accrue(request, timeout=CALL_TIMEOUT_S) for request in plan]

            return await asyncio.gather(*(client(c, p) for c, p in zip(channels, plans)))
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    return [reply for replies in asyncio.run(run()) for reply in replies]


def drain(server, accounts: list[str]) -> list:
    """One purchase in every account, round after round, until a whole round gets nothing."""
    replies = []
    while True:
        round_replies = [server.processing.Accrue(purchase(a), timeout=CALL_TIMEOUT_S) for a in accounts]
        replies += round_replies
        if not any(granted(r, "budget-7") or granted(r, "promo-5") for r in round_replies):
            return replies


@pytest.mark.parametrize("partitions, workers", [(1, 1), (2, 1), (8, 1), (4, 2)],
                         ids=["P1", "P2", "P8", "P4-2-workers"])
def test_shared_budget_and_code_uses_are_granted_exactly_across_partitions(start_kassa, tmp_path, partitions, workers):
    server = start_partitioned(start_kassa, tmp_path, partitions, workers)
    accounts = spread_accounts(f"S{partitions}", partitions, CLIENTS)
    for account_id in accounts:
        open_account(server, account_id)
    server.admin.ImportPromoCodes(admin_pb2.ImportPromoCodesRequest(
        request_id="codes-1", campaign_id="promo-5", codes=[CODE], uses_total=CODE_USES))

    racing = wave(server, [[purchase(a) for _ in range(PURCHASES_PER_CLIENT)] for a in accounts])
    assert {r.transaction_id >> PARTITION_SHIFT_BITS for r in racing} == set(range(partitions))
    assert sum(granted(r, "budget-7") for r in racing) <= BUDGET_POINTS
    assert sum(granted(r, "promo-5") for r in racing) // 5 <= CODE_USES

    replies = racing + drain(server, accounts)
    grants = [granted(r, "budget-7") for r in replies]
    assert sum(grants) == BUDGET_POINTS
    assert max(grants) == 7
    assert sum(granted(r, "promo-5") for r in replies) == CODE_USES * 5
    accepted = [p.accepted for r in replies for p in r.calculation.promo_codes]
    assert accepted.count(True) == CODE_USES
    if partitions == 1:  # one writer counts everything: the race alone spends it all, the last gets 6
        assert sum(grants[:len(racing)]) == BUDGET_POINTS
        assert sorted(set(grants)) == [0, 6, 7]
    held = sum(balance(server, a).active_points for a in accounts)
    assert held == BUDGET_POINTS + CODE_USES * 5
    summary = assert_verifies(server)
    assert summary.get("partitions", 1) == partitions
    layout = sorted(path.name for path in server.ledger_path.iterdir() if path.is_dir() or path.suffix == ".mdb")
    assert layout == (["data.mdb", "lock.mdb"] if partitions == 1 else ["directory", *(f"p{i}" for i in range(partitions))])


def rollback(server, **fields):
    return server.processing.Rollback(processing_pb2.RollbackRequest(request_id=f"undo-{next(_serial)}", **fields),
                                      timeout=CALL_TIMEOUT_S)


def test_rollbacks_find_purchases_in_any_partition(start_kassa, tmp_path):
    server = start_partitioned(start_kassa, tmp_path, 4)
    accounts = spread_accounts("R", 4, 4)
    for account_id in accounts:
        open_account(server, account_id)
    requests = {a: purchase(a) for a in accounts}
    bought = {a: server.processing.Accrue(requests[a], timeout=CALL_TIMEOUT_S) for a in accounts}
    assert sorted(r.transaction_id >> PARTITION_SHIFT_BITS for r in bought.values()) == [0, 1, 2, 3]

    first, second, third, fourth = accounts
    undone = rollback(server, transaction_id=bought[first].transaction_id)
    assert undone.reversed_transaction_id == bought[first].transaction_id
    assert balance(server, first).active_points == 0
    undone = rollback(server, original_request_id=requests[second].request_id)
    assert undone.reversed_transaction_id == bought[second].transaction_id
    assert balance(server, second).active_points == 0
    assert balance(server, third).active_points == bought[third].calculation.earned_points

    # Rolled back before it arrives: the late purchase is refused in whichever partition it lands.
    late = purchase(fourth)
    pending = rollback(server, original_request_id=late.request_id)
    assert pending.kind == processing_pb2.ROLLBACK_KIND_PENDING_ORIGINAL
    with pytest.raises(grpc.RpcError) as refused:
        server.processing.Accrue(late, timeout=CALL_TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert balance(server, fourth).active_points == bought[fourth].calculation.earned_points
    assert_verifies(server)


def test_a_return_past_the_replay_window_finds_the_purchase_in_its_partition(start_kassa, tmp_path):
    """Past the replay window the original's record is in its partition's `retained` database:
    the return is routed there, not answered with a tombstone in every partition."""
    server = start_partitioned(start_kassa, tmp_path, 4,
                               env={"KASSA_LEDGER_COMPACTION_INTERVAL_S": str(COMPACTION_INTERVAL_S)})
    accounts = spread_accounts("Q", 4, 4)
    for account_id in accounts:
        open_account(server, account_id)
    requests = {a: purchase(a) for a in accounts}
    bought = {a: server.processing.Accrue(requests[a], timeout=CALL_TIMEOUT_S) for a in accounts}
    server.clock.advance(days=REPLAY_WINDOW_DAYS + 1)
    compact_now(server, runs=8)  # every partition's compaction, twice

    last = max(accounts, key=lambda a: bought[a].transaction_id)  # in the last partition
    undone = rollback(server, original_request_id=requests[last].request_id)

    assert bought[last].transaction_id >> PARTITION_SHIFT_BITS == 3
    assert undone.reversed_transaction_id == bought[last].transaction_id
    assert undone.kind != processing_pb2.ROLLBACK_KIND_PENDING_ORIGINAL
    assert balance(server, last).active_points == 0
    # Routed to its partition alone: no other partition took it for a tombstone.
    assert tombstones_of(server, requests[last].request_id, partitions=3) == 0
    assert_verifies(server)


def tombstones_of(server, request_id: str, partitions: int) -> int:
    """How many of the first `partitions` partitions hold a record for `request_id`."""
    found = 0
    for index in range(partitions):
        env = lmdb.open(str(server.ledger_path / f"p{index}"), readonly=True, lock=True, max_dbs=MAX_DBS)
        try:
            with env.begin() as txn:
                found += txn.get(request_id.encode(), db=env.open_db(b"idempotency", txn=txn, create=False)) is not None
        finally:
            env.close()
    return found


def test_backup_of_a_partitioned_ledger_serves_and_verifies(start_kassa, tmp_path):
    server = start_partitioned(start_kassa, tmp_path, 2)
    accounts = spread_accounts("B", 2, 4)
    for account_id in accounts:
        open_account(server, account_id)
    wave(server, [[purchase(a) for _ in range(3)] for a in accounts])
    before = {a: balance(server, a).active_points for a in accounts}
    target = tmp_path / "backup"
    result = server.run_cli("backup", str(target), "--config", str(server.config_path()))
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in target.iterdir()) == ["directory", "p0", "p1"]

    restored = start_kassa(rules=server.rules, env={"KASSA_LEDGER_PARTITIONS": "2", "KASSA_LEDGER_PATH": str(target)})
    assert {a: balance(restored, a).active_points for a in accounts} == before
    assert_verifies(restored)


def test_the_slack_of_an_idle_partition_goes_to_the_partition_that_spends(start_kassa, tmp_path):
    """Partition 1 takes a slice with one purchase, then sees none: once partition 0 has emptied the
    bank, partition 1's slack comes back to it within a release interval, so the budget is spent to
    the last point by partition 0's customer alone."""
    server = start_partitioned(start_kassa, tmp_path, 2)
    idle, busy = sorted(spread_accounts("I", 2, 2), key=lambda a: -home_partition(a, 2))
    for account_id in (idle, busy):
        open_account(server, account_id)
    first = server.processing.Accrue(purchase(idle), timeout=CALL_TIMEOUT_S)
    assert granted(first, "budget-7") == 7

    def buy_until_refused() -> int:
        """Waves of 8 purchases at once, until a whole wave gets nothing."""
        got = 0
        while points := sum(granted(r, "budget-7") for r in wave(server, [[purchase(busy)] for _ in range(8)])):
            got += points
        return got

    before_release = buy_until_refused()
    assert before_release < BUDGET_POINTS - 7  # partition 1 holds a slice beyond its one purchase
    time.sleep(2 * ESCROW_RELEASE_INTERVAL_S + 0.5)
    after_release = buy_until_refused()
    assert before_release + after_release == BUDGET_POINTS - 7
    assert_verifies(server)


def test_a_server_configured_for_another_number_of_partitions_refuses_to_start(start_kassa, tmp_path):
    server = start_partitioned(start_kassa, tmp_path, 2)
    server.stop()
    server.extra_env["KASSA_LEDGER_PARTITIONS"] = "1"
    with pytest.raises(RuntimeError) as refused:
        server.start()
    assert "it has 2 partition(s), and ledger.partitions is 1" in str(refused.value)


def test_a_ledger_missing_a_partition_refuses_to_start(start_kassa, tmp_path):
    """A lost partition is not silently made again empty (its accounts would vanish)."""
    server = start_partitioned(start_kassa, tmp_path, 2)
    server.stop()
    (server.ledger_path / "p1" / "data.mdb").unlink()
    with pytest.raises(RuntimeError) as refused:
        server.start()
    assert "partition p1 of the ledger at" in str(refused.value)
    assert not (server.ledger_path / "p1" / "data.mdb").exists()


def test_a_phone_is_one_account_s_across_partitions_and_a_retried_creation_replays(start_kassa, tmp_path):
    server = start_partitioned(start_kassa, tmp_path, 4)
    create = accounts_pb2.CreateAccountRequest(request_id="create-phone", phone="+81 90 0000 0001")
    first = server.accounts.CreateAccount(create, timeout=CALL_TIMEOUT_S)
    assert server.accounts.CreateAccount(create, timeout=CALL_TIMEOUT_S).account.account_id == first.account.account_id
    homes = {home_partition(a, 4) for a in spread_accounts("PH", 4, 4)}
    assert homes == {0, 1, 2, 3}
    for account_id in spread_accounts("PH", 4, 4):  # one of them in every partition
        with pytest.raises(grpc.RpcError) as refused:
            server.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(
                request_id=f"create-{account_id}", account_id=account_id, phone="+81 90 0000 0001"),
                timeout=CALL_TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    found = server.accounts.GetAccount(accounts_pb2.GetAccountRequest(
        customer=common_pb2.Customer(phone="+81 90 0000 0001")), timeout=CALL_TIMEOUT_S)
    assert found.account_id == first.account.account_id
    assert_verifies(server)
