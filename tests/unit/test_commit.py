"""The group committer's failure paths, on a real ledger in a temp directory: whatever goes wrong
before or while a group is taken under LMDB's writer lock, every caller is answered (INTERNAL), and
the committer keeps serving."""

from __future__ import annotations

import asyncio
import time

from kassa.core_ext.model import Code
from kassa.server.clock import SystemClock
from kassa.server.commit import DRAIN_GROUP_OPERATIONS_MAX, GroupCommitter
from tests.core.test_ledger_take import open_ledger, purchase

ANSWER_TIMEOUT_S = 10  # a caller not answered by then counts as never answered


class ClockFailingOnce:
    """The time fails once, as a test clock whose file is gone would, then comes back."""

    def __init__(self):
        self.calls = 0

    def now_ms(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise OSError("clock file is gone")
        return SystemClock().now_ms()


async def submit_each(ledger, clock, *op_lists) -> tuple[list, GroupCommitter]:
    """Submit each list in turn, one group each; the outcomes of each."""
    committer = GroupCommitter(ledger, clock, batch_max=100, wait_us_max=0)
    committer.start()
    try:
        answers = [await asyncio.wait_for(committer.submit(ops), ANSWER_TIMEOUT_S) for ops in op_lists]
    finally:
        await asyncio.wait_for(committer.stop(), ANSWER_TIMEOUT_S)
    return answers, committer


def test_a_failure_while_taking_the_group_answers_the_taken_and_serving_goes_on(tmp_path):
    ledger = open_ledger(tmp_path)
    clock = ClockFailingOnce()
    (first, second), _ = asyncio.run(submit_each(ledger, clock, [purchase(1), purchase(2)], [purchase(3)]))
    assert [outcome.code for outcome in first] == [Code.INTERNAL, Code.INTERNAL]
    assert "OSError" in first[0].message
    assert [outcome.code for outcome in second] == [Code.OK]
    retried = ledger.apply([purchase(1)], SystemClock().now_ms())  # the failed group wrote nothing
    assert retried[0].code == Code.OK
    assert retried[0].body.transaction_id > second[0].body.transaction_id
    ledger.close()


def test_a_ledger_that_cannot_begin_a_write_answers_every_caller(tmp_path):
    """LMDB refuses the write transaction before anything is taken: the queued callers are answered
    INTERNAL, once each, and the committer does not spin on the queue."""
    ledger = open_ledger(tmp_path)
    ledger.close()
    (first, second), committer = asyncio.run(submit_each(ledger, SystemClock(), [purchase(1)], [purchase(2)]))
    assert [outcome.code for outcome in first + second] == [Code.INTERNAL, Code.INTERNAL]
    assert committer.groups_committed == 2


DRAIN_WAIT_US_MAX = 300_000  # each group waits this long: callers queue behind it


def test_past_the_drains_deadline_queued_callers_are_answered_unavailable_and_nothing_of_theirs_is_committed(tmp_path):
    ledger = open_ledger(tmp_path)

    async def scenario():
        committer = GroupCommitter(ledger, SystemClock(), batch_max=100, wait_us_max=DRAIN_WAIT_US_MAX)
        committer.start()
        (first,) = await asyncio.wait_for(committer.submit([purchase(1)]), ANSWER_TIMEOUT_S)
        committer.drain(time.monotonic() + DRAIN_WAIT_US_MAX / 1_000_000 / 2)  # passes while they wait
        queued = [asyncio.ensure_future(committer.submit([purchase(number)])) for number in (2, 3)]
        answers = await asyncio.wait_for(asyncio.gather(*queued), ANSWER_TIMEOUT_S)
        late = await committer.submit([purchase(4)])
        await asyncio.wait_for(committer.stop(), ANSWER_TIMEOUT_S)
        return first, [outcome for (outcome,) in answers], late[0], committer

    first, queued, late, committer = asyncio.run(scenario())
    assert first.code == Code.OK
    assert [outcome.code for outcome in (*queued, late)] == [Code.UNAVAILABLE] * 3
    assert "send it again" in queued[0].message
    assert committer.refusing
    (again,) = ledger.apply([purchase(2)], SystemClock().now_ms())  # not a replay: it was never committed
    assert again.code == Code.OK
    assert again.body.transaction_id == first.body.transaction_id + 1
    ledger.close()


def test_a_drain_commits_in_small_groups_until_its_deadline(tmp_path):
    ledger = open_ledger(tmp_path)

    async def scenario():
        committer = GroupCommitter(ledger, SystemClock(), batch_max=10_000, wait_us_max=0)
        committer.start()
        committer.drain(time.monotonic() + ANSWER_TIMEOUT_S)
        callers = [committer.submit([purchase(number)]) for number in range(DRAIN_GROUP_OPERATIONS_MAX + 1)]
        answers = await asyncio.wait_for(asyncio.gather(*callers), ANSWER_TIMEOUT_S)
        await asyncio.wait_for(committer.stop(), ANSWER_TIMEOUT_S)
        return [outcome for (outcome,) in answers], committer

    outcomes, committer = asyncio.run(scenario())
    assert [outcome.code for outcome in outcomes] == [Code.OK] * (DRAIN_GROUP_OPERATIONS_MAX + 1)
    assert committer.groups_committed == 2  # 1,000 and 1
    ledger.close()
