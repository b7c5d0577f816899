"""The group committer's failure paths, on a real ledger in a temp directory: whatever goes wrong
before or while a group is taken under LMDB's writer lock, every caller is answered (INTERNAL), and
the committer keeps serving."""

from __future__ import annotations

import asyncio

from core_ext.model import Code
from server.clock import SystemClock
from server.commit import GroupCommitter
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
