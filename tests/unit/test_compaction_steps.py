"""How the server sizes compaction's steps (server/servicers/admin.py, `compact_ledger`): by how long
the last step held the writer, so that a pass keeps up with the purchases; on a real ledger in a
temp directory, through the real group committer."""

from __future__ import annotations

import asyncio

import pytest

from kassa.core_ext import Ledger, Program
from kassa.core_ext.compaction import COMPACT_RECORDS_PER_STEP_MAX, COMPACT_RECORDS_PER_TXN_MAX
from kassa.core_ext.model import Code, CreateAccountOp
from kassa.core_ext.retention import Retention
from kassa.server.commit import GroupCommitter
from kassa.server.servicers.admin import compact_ledger, next_step_records
from tests.core.programs import program
from tests.core.test_compaction import CAMPAIGNS, DAY_MS, HOLD_TTL_S, T0_MS, purchase

MAP_SIZE_BYTES = 256 * 1024**2
PURCHASES = 3_000  # with their records, several fixed steps' worth
GROUP_OPS = 500
WINDOWS = Retention(60_000, 120_000)  # ms
ROOMY_STEP_MS = 10_000  # a bound no step reaches: each step may double the last
ANSWER_TIMEOUT_S = 60


class FixedClock:
    def __init__(self, now_ms: int):
        self.at_ms = now_ms

    def now_ms(self) -> int:
        return self.at_ms


class RecordingCommitter:
    """The real committer; it notes the compaction steps' sizes it was handed."""

    def __init__(self, committer):
        self.committer = committer
        self.records_max: list[int] = []

    async def submit(self, ops, abort_in_flight: bool = True):
        self.records_max.extend(op.records_max for op in ops)
        return await self.committer.submit(ops, abort_in_flight)


def filled_ledger(path) -> Ledger:
    ledger = Ledger(str(path), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S)
    assert ledger.apply([CreateAccountOp("create-A1", b"d", "A1")], T0_MS)[0].code == Code.OK
    for first in range(0, PURCHASES, GROUP_OPS):
        outcomes = ledger.apply([purchase(index) for index in range(first, first + GROUP_OPS)], T0_MS)
        assert {outcome.code for outcome in outcomes} == {Code.OK}
    return ledger


async def compact_through_committer(ledger, now_ms: int, step_ms_max: float):
    committer = GroupCommitter(ledger, FixedClock(now_ms), batch_max=100, wait_us_max=0)
    committer.start()
    recording = RecordingCommitter(committer)
    try:
        done = await asyncio.wait_for(compact_ledger(recording, WINDOWS, step_ms_max), ANSWER_TIMEOUT_S)
    finally:
        await asyncio.wait_for(committer.stop(), ANSWER_TIMEOUT_S)
    return done, recording.records_max


class TestAPassSizesItsSteps:
    def test_fast_steps_grow_and_the_pass_does_all_of_it_in_fewer_steps(self, tmp_path):
        ledger = filled_ledger(tmp_path / "ledger")
        now_ms = T0_MS + DAY_MS
        try:
            done, sizes = asyncio.run(compact_through_committer(ledger, now_ms, ROOMY_STEP_MS))
            # What a pass's last steps dropped, the next pass forgets (its forget walk runs first).
            rest, _ = asyncio.run(compact_through_committer(ledger, now_ms, ROOMY_STEP_MS))
            assert done.answers_dropped == PURCHASES + 1
            assert done.requests_forgotten + rest.requests_forgotten == PURCHASES + 1
            assert sizes[0] == COMPACT_RECORDS_PER_TXN_MAX
            assert sizes[1:] == [min(2 * size, COMPACT_RECORDS_PER_STEP_MAX) for size in sizes[:-1]]
            assert len(sizes) < (done.answers_dropped + done.requests_forgotten) // COMPACT_RECORDS_PER_TXN_MAX
            assert ledger.verify(now_ms) == []
        finally:
            ledger.close()


class TestNextStepRecords:
    @pytest.mark.parametrize(("records_max", "step_us", "step_ms_max", "expected"), [
        (1_000, 5_000, 10, 2_000),  # half the bound: twice the records
        (4_000, 2_000, 10, 8_000),  # a fifth of the bound: at most twice, not five times
        (8_000, 20_000, 10, 4_000),  # twice the bound: half the records
        (2_000, 1_000_000, 10, COMPACT_RECORDS_PER_TXN_MAX),  # very slow: never below the first step's size
        (40_000, 1_000, 10, COMPACT_RECORDS_PER_STEP_MAX),  # very fast: never above the most a step examines
        (1_000, 0, 10, 2_000),  # a step too short to time
    ])
    def test_a_step_is_sized_to_the_bound_at_the_last_steps_rate(self, records_max, step_us, step_ms_max, expected):
        assert next_step_records(records_max, step_us, step_ms_max) == expected
