"""When a group waits for more callers (`commit.wait_us_max`), on a real ledger in a temp
directory: a caller arriving during the wait shares the first caller's commit; once the last groups
were small (one or two callers each), a caller is committed at once instead of being held for the
wait; and the first larger group brings the wait back.

The wait is set to a whole second, the most the config allows, so that a call held for it cannot be
mistaken for a slow commit; "at once" means well inside it."""

from __future__ import annotations

import asyncio

from kassa.core_ext.model import Code
from kassa.server.clock import SystemClock
from kassa.server.commit import SMALL_GROUP_CALLERS_MAX, SMALL_GROUPS_BEFORE_NO_WAIT, GroupCommitter
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


async def together(committer, numbers: range) -> list[int]:
    """One caller per purchase, all at once: their outcomes' codes."""
    answers = await asyncio.wait_for(
        asyncio.gather(*(committer.submit([purchase(number)]) for number in numbers)), ANSWER_TIMEOUT_S)
    return [outcome.code for (outcome,) in answers]


def test_a_caller_arriving_during_the_wait_shares_the_first_callers_commit(tmp_path):
    ledger = open_ledger(tmp_path)

    async def body(committer):
        early = asyncio.ensure_future(committer.submit([purchase(1)]))
        await asyncio.sleep(SECOND_CALLER_AFTER_S)
        late = committer.submit([purchase(2)])
        answers = await asyncio.wait_for(asyncio.gather(early, late), ANSWER_TIMEOUT_S)
        return [outcome.code for (outcome,) in answers], committer.groups_committed

    codes, groups = asyncio.run(with_committer(ledger, body))
    assert codes == [Code.OK, Code.OK]
    assert groups == 1
    ledger.close()


def test_after_small_groups_a_caller_is_committed_at_once_and_a_larger_group_brings_the_wait_back(tmp_path):
    ledger = open_ledger(tmp_path)
    small = SMALL_GROUP_CALLERS_MAX
    larger = SMALL_GROUP_CALLERS_MAX + 1

    async def body(committer):
        lone = [await answered(committer, number) for number in range(SMALL_GROUPS_BEFORE_NO_WAIT + 2)]
        groups_before = committer.groups_committed
        small_group = await together(committer, range(100, 100 + small))
        after_small = await answered(committer, 200)
        larger_group = await together(committer, range(300, 300 + larger))
        after_larger = await answered(committer, 400)
        return lone, groups_before, small_group, after_small, larger_group, after_larger, committer.groups_committed

    lone, groups_before, small_group, after_small, larger_group, after_larger, groups = asyncio.run(
        with_committer(ledger, body))
    assert [code for code, _ in lone] == [Code.OK] * len(lone)
    held = [seconds >= AT_ONCE_S for _, seconds in lone]
    # The first lone callers still wait (someone might join them); then no one waits.
    assert held == [True] * SMALL_GROUPS_BEFORE_NO_WAIT + [False, False], [seconds for _, seconds in lone]
    # Callers arriving together share a group; a small one keeps the next caller from waiting...
    assert small_group == [Code.OK] * small
    assert after_small[0] == Code.OK
    assert after_small[1] < AT_ONCE_S, after_small
    # ...a larger one makes it wait again.
    assert larger_group == [Code.OK] * larger
    assert after_larger[0] == Code.OK
    assert after_larger[1] >= AT_ONCE_S, after_larger
    assert groups == groups_before + 4
    ledger.close()
