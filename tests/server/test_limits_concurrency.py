"""Campaign limits under concurrency, against a real server (one worker, and two sharing the ledger).

Budgets, per-account day caps and promo-code uses are counted in the ledger's write transaction,
so no interleaving of concurrent calls may give more than the limit, and a rollback gives back
exactly what the rolled-back purchase consumed. Each test drives 8 clients, each on its own
`grpc.aio` channel, with many calls each, and checks:

- budget: 8 clients exhaust a campaign's budget of 100 with purchases that ask 7 each; the points
  granted add up to exactly 100 (fourteen 7s and one 2), whatever the order. Rolling back some
  purchases while new ones run gives back exactly what they got: the purchases after that get
  exactly that much, no more;
- day cap: 8 clients buy for the same account at once; the account's points from the campaign
  that local day are exactly the cap; a rollback's share comes back to that day; the next local
  day (in the program's time zone) has its own cap, and a rollback of yesterday's purchase does
  not refill today's;
- promo codes: of 24 purchases presenting one single-use code at once exactly one has it accepted,
  the others see it refused with reason "exhausted"; a code good once per account is accepted once
  for the account ("limit_per_account" for the rest); a generated code good twice is accepted
  twice; rolling back the purchase that used a code makes it usable once more.

Every test ends with `kassa verify` (which replays the journal's counter changes against the
counters) and the account balances; a counter written wrong behind the ledger's back makes it
exit 1. No timings are asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import Counter

import grpc
import lmdb
import pytest

from kassa.core_ext.ledger import MAX_DBS
from kassa.v1 import accounts_pb2, admin_pb2, common_pb2, processing_pb2, processing_pb2_grpc
from tests.kassa_harness import START_TIMEOUT_S, T0_MS
from tests.reliability import CALL_TIMEOUT_S, assert_verifies, verify
from tests.server.helpers import balance, by_account, line, open_account, statement

CLIENTS = 8
HOUR_MS = 3_600_000
TOKYO_MIDNIGHT_MS = T0_MS + 7 * HOUR_MS  # the harness's T0 is 17:00 in Tokyo (UTC+9, no DST)

PROGRAM = """
[program]
name = "limits under concurrency"
timezone = "Asia/Tokyo"
points_lifetime_days = 365
"""

CAMPAIGNS = """
[[campaigns]]
id = "budget-7"
when = { category_prefixes = ["budget/"] }
effect = { kind = "earn_fixed", points = 7 }
limits = { budget_points = 100 }

[[campaigns]]
id = "day-30"
when = { category_prefixes = ["daily/"] }
effect = { kind = "earn_fixed", points = 30 }
limits = { account_day_max_points = 100 }

[[campaigns]]
id = "promo-500"
promo_code = true
when = { category_prefixes = ["promo/"] }
effect = { kind = "earn_fixed", points = 500 }
"""

BUDGET = 100
DAY_CAP = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def server(request, tmp_path, start_kassa):
    """A server on the test program; with 2 workers, two processes commit to the one ledger."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "program.toml").write_text(PROGRAM)
    (rules / "campaigns.toml").write_text(CAMPAIGNS)
    env = {}
    if request.param > 1:  # the workers share a fixed port (SO_REUSEPORT)
        env = {"KASSA_SERVER_WORKERS": str(request.param), "KASSA_SERVER_LISTEN": f"127.0.0.1:{free_port()}"}
    kassa = start_kassa(rules=rules, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while sum('"msg":"serving"' in entry for entry in list(kassa.log_lines)) < request.param:
        assert time.monotonic() < deadline, "".join(kassa.log_lines)
        time.sleep(0.05)
    return kassa


# -- requests and concurrent waves ---------------------------------------------------------------

_serial = itertools.count(1)


def purchase(account_id: str, category: str, codes: tuple[str, ...] = ()) -> processing_pb2.AccrueRequest:
    request_id = f"buy-{next(_serial)}"
    return processing_pb2.AccrueRequest(
        request_id=request_id,
        customer=by_account(account_id),
        receipt=common_pb2.Receipt(store_id="store-1", terminal_id="term-1", receipt_no=request_id,
                                   lines=[line(1, 1_000, category=category)], promo_codes=list(codes)),
    )


def cancel(transaction_id: int) -> processing_pb2.RollbackRequest:
    return processing_pb2.RollbackRequest(request_id=f"cancel-{next(_serial)}", transaction_id=transaction_id)


def wave(server, plans: list[list]) -> list[list]:
    """Run `plans[i]` (requests: AccrueRequest or RollbackRequest) one after another on client i's own
    aio channel, all clients at once; returns the replies in the same shape."""
    assert len(plans) == CLIENTS

    async def run():
        channels = [grpc.aio.insecure_channel(server.address) for _ in plans]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CALL_TIMEOUT_S)

            async def client(channel, plan):
                stub = processing_pb2_grpc.ProcessingStub(channel)
                replies = []
                for request in plan:
                    method = stub.Accrue if isinstance(request, processing_pb2.AccrueRequest) else stub.Rollback
                    replies.append(await method(request, timeout=CALL_TIMEOUT_S))
                return replies

            return await asyncio.gather(*(client(c, p) for c, p in zip(channels, plans)))
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    return asyncio.run(run())


def flat(replies: list[list]) -> list:
    return [reply for client in replies for reply in client]


def granted(reply: processing_pb2.AccrueResponse, campaign_id: str) -> int:
    """The points `campaign_id` gave on this purchase (0: it did not apply)."""
    points = [c.points for c in reply.calculation.campaigns if c.campaign_id == campaign_id]
    assert len(points) <= 1
    return points[0] if points else 0


def purchases(replies: list) -> list[processing_pb2.AccrueResponse]:
    return [r for r in replies if isinstance(r, processing_pb2.AccrueResponse)]


def rollbacks(replies: list) -> list[processing_pb2.RollbackResponse]:
    return [r for r in replies if isinstance(r, processing_pb2.RollbackResponse)]


def outstanding(server, account_ids) -> int:
    """Points the accounts hold, and (cross-checked) their lifetime earned after clawbacks."""
    total = 0
    for account_id in account_ids:
        account = server.accounts.GetAccount(accounts_pb2.GetAccountRequest(customer=by_account(account_id)))
        assert account.balance.active_points == account.lifetime_earned_points
        total += account.balance.active_points
    return total


# -- budget --------------------------------------------------------------------------------------


def test_budget_is_spent_exactly_and_a_rollback_gives_back_exactly_its_share(server):
    accounts = [f"B-{i}" for i in range(CLIENTS)]
    for account_id in accounts:
        open_account(server, account_id)

    # 8 clients x 6 purchases ask 7 each: 336 of a budget of 100.
    first = flat(wave(server, [[purchase(a, "budget/x") for _ in range(6)] for a in accounts]))
    grants = [granted(r, "budget-7") for r in first]
    assert sum(grants) == BUDGET
    assert Counter(grants) == Counter({7: 14, 2: 1, 0: 33})  # the 15th gets what is left, then nothing
    assert all(r.calculation.earned_points == g for r, g in zip(first, grants))
    assert outstanding(server, accounts) == BUDGET

    # Cancel the one that got 2 and three that got 7, while 8 clients go on buying.
    chosen = [r for r in first if granted(r, "budget-7") == 2] + [r for r in first if granted(r, "budget-7") == 7][:3]
    given_back = sum(granted(r, "budget-7") for r in chosen)
    assert given_back == 23
    plans = [[purchase(a, "budget/x") for _ in range(3)] for a in accounts]
    for index, reply in enumerate(chosen):
        plans[2 * index].insert(1, cancel(reply.transaction_id))
    second = flat(wave(server, plans))
    undone = rollbacks(second)
    assert sorted(r.reversed_transaction_id for r in undone) == sorted(r.transaction_id for r in chosen)
    assert sum(r.clawed_back_points for r in undone) == given_back
    # Then 8 clients take what is left; in all, the purchases after the rollbacks got exactly 23.
    third = flat(wave(server, [[purchase(a, "budget/x") for _ in range(2)] for a in accounts]))
    regranted = [granted(r, "budget-7") for r in purchases(second) + third]
    assert sum(regranted) == given_back
    # What is left is always 7k or 7k + 2, so whatever the order the grants are three 7s and a 2.
    assert Counter(g for g in regranted if g) == Counter({7: 3, 2: 1})
    assert outstanding(server, accounts) == BUDGET
    assert_verifies(server)

    # `kassa verify` replays the counters: one written wrong behind the ledger's back is found.
    server.stop()
    env = lmdb.open(str(server.ledger_path), max_dbs=MAX_DBS, map_size=256 * 1024 * 1024)
    try:
        counters = env.open_db(b"counters")
        with env.begin(write=True) as txn:
            assert int.from_bytes(txn.get(b"B:budget-7", db=counters), "big", signed=True) == BUDGET
            txn.put(b"B:budget-7", (BUDGET - 7).to_bytes(8, "big", signed=True), db=counters)
    finally:
        env.close()
    code, _, output = verify(server)
    assert code == 1, output
    assert "VIOLATION" in output and "B:budget-7" in output, output


# -- per-account day cap -------------------------------------------------------------------------


def day_points(server, account_id: str, request_ids: set[str]) -> int:
    """Points the account's statement shows earned, less clawed back, by the purchases in `request_ids`
    and the rollbacks of them."""
    entries = statement(server, account_id)
    by_id = {t.transaction_id: t for t in entries}
    total = 0
    for entry in entries:
        if entry.kind == accounts_pb2.TRANSACTION_KIND_ACCRUE and entry.request_id in request_ids:
            total += entry.earned_points
        if entry.kind == accounts_pb2.TRANSACTION_KIND_ROLLBACK and \
                by_id[entry.reverses_transaction_id].request_id in request_ids:
            total -= entry.clawed_back_points
    return total


def test_day_cap_holds_for_one_account_bought_for_by_8_clients(server):
    open_account(server, "D-1")
    open_account(server, "D-2")

    # 17:00 in Tokyo: 8 clients x 4 purchases for the same account ask 30 each of a day cap of 100.
    first = flat(wave(server, [[purchase("D-1", "daily/x") for _ in range(4)] for _ in range(CLIENTS)]))
    grants = [granted(r, "day-30") for r in first]
    assert sum(grants) == DAY_CAP
    assert Counter(grants) == Counter({30: 3, 10: 1, 0: 28})
    day1 = {t.request_id for t in statement(server, "D-1") if t.kind == accounts_pb2.TRANSACTION_KIND_ACCRUE}
    assert len(day1) == 32
    assert day_points(server, "D-1", day1) == DAY_CAP
    assert balance(server, "D-1").active_points == DAY_CAP
    # The cap is the account's: another account still earns.
    (other,) = flat(wave(server, [[purchase("D-2", "daily/x")]] + [[] for _ in range(CLIENTS - 1)]))
    assert granted(other, "day-30") == 30

    # Cancel the purchase that got 10 and one that got 30 while 8 clients go on buying for the account;
    # then 8 clients take what is left: exactly 40 more, and the day's points are the cap again.
    chosen = [r for r in first if granted(r, "day-30") == 10] + [r for r in first if granted(r, "day-30") == 30][:1]
    plans = [[purchase("D-1", "daily/x") for _ in range(2)] for _ in range(CLIENTS)]
    plans[0].insert(1, cancel(chosen[0].transaction_id))
    plans[5].insert(0, cancel(chosen[1].transaction_id))
    second = flat(wave(server, plans))
    assert sum(r.clawed_back_points for r in rollbacks(second)) == 40
    third = flat(wave(server, [[purchase("D-1", "daily/x") for _ in range(2)] for _ in range(CLIENTS)]))
    regranted = [granted(r, "day-30") for r in purchases(second) + third]
    assert sum(regranted) == 40
    assert Counter(g for g in regranted if g) == Counter({30: 1, 10: 1})  # what is left is 30k or 30k + 10
    day1 = {t.request_id for t in statement(server, "D-1") if t.kind == accounts_pb2.TRANSACTION_KIND_ACCRUE}
    assert day_points(server, "D-1", day1) == DAY_CAP
    assert balance(server, "D-1").active_points == DAY_CAP

    # 23:59:59.999 in Tokyo (14:59 UTC): still the same local day, nothing more.
    server.clock.set(TOKYO_MIDNIGHT_MS - 1)
    late = flat(wave(server, [[purchase("D-1", "daily/x")] for _ in range(CLIENTS)]))
    assert [granted(r, "day-30") for r in late] == [0] * CLIENTS
    # Midnight in Tokyo, the same UTC date: a new local day with a cap of its own.
    server.clock.set(TOKYO_MIDNIGHT_MS)
    before = {t.request_id for t in statement(server, "D-1")}
    next_day = flat(wave(server, [[purchase("D-1", "daily/x") for _ in range(3)] for _ in range(CLIENTS)]))
    assert Counter(granted(r, "day-30") for r in next_day) == Counter({30: 3, 10: 1, 0: 20})
    day2 = {r.transaction_id for r in next_day}
    day2 = {t.request_id for t in statement(server, "D-1") if t.transaction_id in day2}
    assert not day2 & before and day_points(server, "D-1", day2) == DAY_CAP

    # A rollback of yesterday's purchase gives back to yesterday's cap: today's stays spent.
    yesterday = next(r for r in purchases(third) + purchases(second) if granted(r, "day-30") == 30)
    undone, *rest = flat(wave(server, [[cancel(yesterday.transaction_id)]] +
                              [[purchase("D-1", "daily/x")] for _ in range(CLIENTS - 1)]))
    assert undone.clawed_back_points == 30
    after = rest + flat(wave(server, [[purchase("D-1", "daily/x")] for _ in range(CLIENTS)]))
    assert [granted(r, "day-30") for r in after] == [0] * (2 * CLIENTS - 1)
    assert balance(server, "D-1").active_points == DAY_CAP + DAY_CAP - 30
    assert_verifies(server)


# -- promo codes ---------------------------------------------------------------------------------


def import_codes(server, *codes: str, uses_total: int = 0, uses_per_account: int = 0) -> None:
    reply = server.admin.ImportPromoCodes(admin_pb2.ImportPromoCodesRequest(
        request_id=f"codes-{next(_serial)}", campaign_id="promo-500", codes=list(codes), uses_total=uses_total,
        uses_per_account=uses_per_account))
    assert list(reply.codes) == list(codes)


def code_answers(replies, code: str) -> Counter:
    """(accepted, reason) of `code` over the purchases, counted; checks the campaign applied exactly
    where the code was accepted."""
    answers = Counter()
    for reply in replies:
        (result,) = [r for r in reply.calculation.promo_codes if r.code == code]
        answers[result.accepted, result.reason] += 1
        assert granted(reply, "promo-500") == (500 if result.accepted else 0)
    return answers


def test_a_single_use_code_is_accepted_once_among_concurrent_purchases(server):
    accounts = [f"P-{i}" for i in range(CLIENTS)]
    for account_id in accounts:
        open_account(server, account_id)
    import_codes(server, "ONCE-2026", uses_total=1)

    first = flat(wave(server, [[purchase(a, "promo/x", ("ONCE-2026",)) for _ in range(3)] for a in accounts]))
    assert code_answers(first, "ONCE-2026") == Counter({(True, ""): 1, (False, "exhausted"): 23})
    (winner,) = [r for r in first if granted(r, "promo-500")]
    assert outstanding(server, accounts) == 500

    # Rolled back (beside purchases presenting the code), the code is good for exactly one more use.
    plans = [[purchase(a, "promo/x", ("ONCE-2026",)) for _ in range(3)] for a in accounts]
    plans[3].insert(1, cancel(winner.transaction_id))
    second = flat(wave(server, plans))
    assert rollbacks(second)[0].clawed_back_points == 500
    third = flat(wave(server, [[purchase(a, "promo/x", ("ONCE-2026",)) for _ in range(2)] for a in accounts]))
    assert code_answers(purchases(second) + third, "ONCE-2026") == Counter({(True, ""): 1, (False, "exhausted"): 39})
    assert outstanding(server, accounts) == 500
    assert_verifies(server)


def test_one_purchase_sent_by_8_clients_at_once_uses_its_code_once(server):
    """The same request (one request id) from 8 clients: one transaction, the code used once; the
    copies that arrive while it is in flight are ABORTED and, retried, replay its answer."""
    open_account(server, "R-1")
    open_account(server, "R-2")
    import_codes(server, "ONCE-R", uses_total=1)
    request = purchase("R-1", "promo/x", ("ONCE-R",))

    async def run():
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(CLIENTS)]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CALL_TIMEOUT_S)

            async def client(channel):
                stub = processing_pb2_grpc.ProcessingStub(channel)
                replies = []
                for _ in range(3):
                    while True:
                        try:
                            replies.append(await stub.Accrue(request, timeout=CALL_TIMEOUT_S))
                            break
                        except grpc.aio.AioRpcError as error:
                            assert error.code() == grpc.StatusCode.ABORTED, error
                            await asyncio.sleep(0.01)
                return replies

            return await asyncio.gather(*(client(c) for c in channels))
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    replies = flat(asyncio.run(run()))
    assert len(replies) == 3 * CLIENTS
    assert len({r.SerializeToString(deterministic=True) for r in replies}) == 1  # one answer, replayed
    assert code_answers(replies[:1], "ONCE-R") == Counter({(True, ""): 1})
    assert [t.request_id for t in statement(server, "R-1")].count(request.request_id) == 1
    (other,) = flat(wave(server, [[purchase("R-2", "promo/x", ("ONCE-R",))]] + [[] for _ in range(CLIENTS - 1)]))
    assert code_answers([other], "ONCE-R") == Counter({(False, "exhausted"): 1})
    assert_verifies(server)


def test_codes_per_account_and_generated_codes_under_concurrency(server):
    accounts = [f"Q-{i}" for i in range(CLIENTS)]
    for account_id in accounts:
        open_account(server, account_id)
    import_codes(server, "EACH-2026", uses_per_account=1)
    generated = server.admin.GeneratePromoCodes(admin_pb2.GeneratePromoCodesRequest(
        request_id="generate-1", campaign_id="promo-500", pattern="GEN-########", count=1, uses_total=2))
    (twice,) = generated.codes

    # 8 clients x 3 purchases for ONE account present the per-account code: accepted once.
    first = flat(wave(server, [[purchase("Q-0", "promo/x", ("EACH-2026",)) for _ in range(3)] for _ in accounts]))
    assert code_answers(first, "EACH-2026") == Counter({(True, ""): 1, (False, "limit_per_account"): 23})
    (winner,) = [r for r in first if granted(r, "promo-500")]
    # Another account may use it too; the first, once its purchase is rolled back, once more.
    plans = [[purchase("Q-0", "promo/x", ("EACH-2026",)) for _ in range(2)] for _ in accounts]
    plans[0].insert(0, purchase("Q-1", "promo/x", ("EACH-2026",)))
    plans[6].insert(1, cancel(winner.transaction_id))
    second = purchases(flat(wave(server, plans)))
    third = flat(wave(server, [[purchase("Q-0", "promo/x", ("EACH-2026",)) for _ in range(2)] for _ in accounts]))
    q1 = [r for r in second if r.account_id == "Q-1"]
    assert code_answers(q1, "EACH-2026") == Counter({(True, ""): 1})
    q0 = [r for r in second + third if r.account_id == "Q-0"]
    assert code_answers(q0, "EACH-2026") == Counter({(True, ""): 1, (False, "limit_per_account"): 31})

    # A generated code good twice, presented by 8 accounts x 3 at once: accepted exactly twice.
    fourth = flat(wave(server, [[purchase(a, "promo/x", (twice,)) for _ in range(3)] for a in accounts]))
    assert code_answers(fourth, twice) == Counter({(True, ""): 2, (False, "exhausted"): 22})
    assert outstanding(server, accounts) == 4 * 500
    assert_verifies(server)
