"""Client deadlines that pass mid-commit: each request took full effect or none, and a retry settles it.

Many purchases are sent at once with a deadline of 1-5 ms, so that most deadlines pass while the
request waits for or sits in a group commit. The client cannot know which took effect; it retries
each with the same request id and payload (an ABORTED retry, "same request id in flight", is
retried again). Every retry is answered OK; one that had taken effect replays its transaction.
Then every purchase is in the ledger exactly once, with exactly its points (earned and, where it
paid with points, redeemed in the same transaction), the balance is exactly the sum and
`kassa verify` exits 0.
"""

from __future__ import annotations

import random

import grpc
import pytest

from tests.reliability import CALL_TIMEOUT_S, assert_verifies, call_until_answered, purchase, transactions_by_request
from tests.server.helpers import balance, open_account

WAVES = 10
PER_WAVE = 24  # purchases in flight at once
OPENING_POINTS = 100_000
SEED = random.SystemRandom().randrange(2**32)


@pytest.mark.parametrize("commit_wait_us", [0, 3_000], ids=["commit-at-once", "commit-waits-3ms"])
class TestDeadlineMidCommit:
    def test_every_purchase_whose_deadline_passed_is_applied_exactly_once_after_its_retry(
        self, start_kassa, commit_wait_us
    ):
        print(f"\ndeadline test seed: {SEED}")
        rng = random.Random(SEED)
        server = start_kassa(env={"KASSA_COMMIT_WAIT_US_MAX": str(commit_wait_us)})
        account_id = "DL-1"
        open_account(server, account_id)
        server.processing.Accrue(purchase(account_id, "fund", OPENING_POINTS // 10), timeout=CALL_TIMEOUT_S)
        for n in range(9):
            server.processing.Accrue(purchase(account_id, f"fund-{n}", OPENING_POINTS // 10), timeout=CALL_TIMEOUT_S)
        requests, first_answers = [], {}
        for wave in range(WAVES):
            batch = []
            for n in range(PER_WAVE):
                points = rng.randint(1, 500)
                redeem = rng.choice([0, 0, rng.randint(1, points * 10)])  # some pay with points too
                request = purchase(account_id, f"deadline/{wave}/{n}", points, redeem_points=redeem)
                batch.append((request, points, redeem))
            calls = [
                (request, server.processing.Accrue.future(request, timeout=rng.uniform(0.001, 0.005)))
                for request, _, _ in batch
            ]
            for request, call in calls:
                try:
                    first_answers[request.request_id] = call.result()
                except grpc.RpcError as error:
                    assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED), (
                        f"{request.request_id}: {error.code().name} {error.details()}"
                    )
            requests.extend(batch)
        timed_out = len(requests) - len(first_answers)
        print(f"{len(requests)} purchases, {timed_out} passed their deadline")
        assert timed_out >= len(requests) // 10, "too few deadlines passed to test anything; shorten them"

        # A transaction numbered below this marker was committed before any retry: its deadline
        # passed while it was being committed.
        marker = call_until_answered(server.processing.Accrue, purchase(account_id, "marker", 1)).transaction_id
        applied_unseen = 0
        for request, points, redeem in requests:
            reply = call_until_answered(server.processing.Accrue, request)
            assert not isinstance(reply, grpc.RpcError), (
                f"retry of {request.request_id}: {reply.code().name} {reply.details()}"
            )
            first = first_answers.get(request.request_id)
            if first is not None:
                assert reply.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
            assert reply.calculation.earned_points == points
            assert reply.calculation.redeemed_points == redeem
            applied_unseen += first is None and reply.transaction_id < marker
        print(f"{applied_unseen} of them had been committed although the client gave up on them")

        found = transactions_by_request(server, account_id)
        for request, points, redeem in requests:
            transactions = found.get(request.request_id, [])
            assert len(transactions) == 1, f"{request.request_id} is in the ledger {len(transactions)} times"
            assert (transactions[0].earned_points, transactions[0].redeemed_points) == (points, redeem)
        expected = OPENING_POINTS + 1 + sum(points - redeem for _, points, redeem in requests)
        now = balance(server, account_id)
        assert now.active_points == now.available_points == expected, (
            f"balance {now.active_points}; the purchases, each once, make {expected} (seed {SEED})"
        )
        assert_verifies(server)
