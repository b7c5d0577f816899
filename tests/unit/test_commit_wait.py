"""When a group waits for more callers (`commit.wait_us_max`), on a real ledger in a temp
directory: a caller arriving during the wait shares the first caller's commit; a lone caller, once
the last groups had one caller each, is committed at once instead of being held for the wait; and
the first group with two callers brings the wait back.

The wait is set to a whole second, the most the config allows, so that a call held for it cannot be
mistaken for a slow commit; "at once" means well inside it."""

from __future__ import annotations

import asyncio

from core_ext.model import Code
from server.clock import SystemClock
from server.commit import LONE_GROUPS_BEFORE_NO_WAIT, GroupCommitter
from tests.core.test_ledger_take import open_ledger, purchase

WAIT_US_MAX = 1_000_000
WAIT_S = WAIT_US_MAX / 1_000_000
AT_ONCE_S = WAIT_S / 2  # a caller answered within this was not held for the wait
SECOND_CALLER_AFTER_S = 0.2  # well inside the wait
ANSWER_TIMEOUT_S = 10


async def with_committer(ledger, body):
    committer = GroupCommitter(ledger, SystemClock(), batch_max=100, wait_us_max=WAIT_US_MAX)
    committer.start()
    try:
        return await body(committer)
    finally:
        await asyncio.wait_for(committer.stop(), ANSWER_TIMEOUT_S)


async def answered(committer, number: int) -> tuple[int, float]:
    """Submit one purchase alone: its outcome's code and the seconds until it was answered."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    (outcome,) = await asyncio.wait_for(committer.submit([purchase(number)]), ANSWER_TIMEOUT_S)
    return outcome.code, loop.time() - started


async def two_callers(committer, first: int, second: int, apart_s: float) -> list[int]:
    """Two callers, the second `apart_s` after the first: their outcomes' codes."""
    early = asyncio.ensure_future(committer.submit([purchase(first)]))
    await asyncio.sleep(apart_s)
    late = committer.submit([purchase(second)])
    answers = await asyncio.wait_for(asyncio.gather(early, late), ANSWER_TIMEOUT_S)
    return [outcome.code for (outcome,) in answers]


def test_a_caller_arriving_during_the_wait_shares_the_first_callers_commit(tmp_path):
    ledger = open_ledger(tmp_path)

    async def body(committer):
        codes = await two_callers(committer, 1, 2, apart_s=SECOND_CALLER_AFTER_S)
        return codes, committer.groups_committed

    codes, groups = asyncio.run(with_committer(ledger, body))
    assert codes == [Code.OK, Code.OK]
    assert groups == 1
    ledger.close()


def test_a_lone_caller_is_committed_at_once_after_lone_groups_and_two_callers_bring_the_wait_back(tmp_path):
    ledger = open_ledger(tmp_path)

    async def body(committer):
        lone = [await answered(committer, number) for number in range(LONE_GROUPS_BEFORE_NO_WAIT + 2)]
        together = await two_callers(committer, 100, 101, apart_s=0)
        after_together = await answered(committer, 102)
        return lone, together, after_together, committer.groups_committed

    lone, together, (after_code, after_s), groups = asyncio.run(with_committer(ledger, body))
    assert [code for code, _ in lone] == [Code.OK] * len(lone)
    held = [seconds >= AT_ONCE_S for _, seconds in lone]
    # The first lone callers still wait (someone might join them); then no one waits.
    assert held == [True] * LONE_GROUPS_BEFORE_NO_WAIT + [False, False], [seconds for _, seconds in lone]
    # Two callers at once share a group (no longer lone)...
    assert together == [Code.OK, Code.OK]
    assert groups == len(lone) + 1 + 1
    # ...so the next lone caller waits again.
    assert after_code == Code.OK
    assert after_s >= AT_ONCE_S, after_s
    ledger.close()
