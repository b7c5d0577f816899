"""Partitions in a cluster: a partition's slice of a shared budget is its share of the cap plus its
logged SliceGranted less SliceReleased (server/cluster/placed.py), applied from the log alone, so
that every copy of the partition reaches the same ledger, and it survives a restart. The bank's
entries (server/cluster/escrow_bank.py) change by compare-and-set only."""

from __future__ import annotations

import asyncio

from kassa.core_ext import Program
from kassa.core_ext.model import AccrueOp, Code, CreateAccountOp, Customer, IdKind, Line, Receipt
from kassa.core_ext.partitions import PartitionedLedger, home_partition
from kassa.server.cluster.digest import ledger_digest
from kassa.server.cluster.escrow_bank import BANK_CAS_TRIES_MAX, BankEntry, change_entry, read_entry, take_share
from kassa.server.cluster.group_record import SliceGranted, SliceReleased
from kassa.server.cluster.placed import PlacedLedger, split_budgets
from kassa.server.cluster.streams import ESCROW_BUCKET
from tests.core.programs import program
from tests.cluster.support import HOLD_TTL_S, MAP_SIZE_BYTES, T0_MS, jetstream

PARTITIONS = 2
BUDGET_POINTS = 10  # partition 0's even share: 5
POINTS_PER_PURCHASE = 2
BUDGET_KEY = b"B:budget"
CAMPAIGNS = f"""
[[campaigns]]
id = "budget"
when = {{}}
effect = {{ kind = "earn_fixed", points = {POINTS_PER_PURCHASE} }}
limits = {{ budget_points = {BUDGET_POINTS} }}
"""
ACCOUNT = next(f"S{n}" for n in range(1000) if home_partition(f"S{n}", PARTITIONS) == 0)


def open_placed(path) -> tuple[PartitionedLedger, PlacedLedger]:
    ledger = PartitionedLedger(str(path), Program(program(CAMPAIGNS)), MAP_SIZE_BYTES, HOLD_TTL_S, sync=False,
                               partitions=PARTITIONS)
    split_budgets(ledger)
    return ledger, PlacedLedger(ledger.parts[0], ledger.directory, 0)


def purchase(number: int) -> AccrueOp:
    line = Line(1, "SKU-1", "grocery/milk", 1000, 10_000, 10_000)
    receipt = Receipt("store-1", "t1", f"r-{number}", (line,))
    return AccrueOp(f"buy-{number}", f"d:{number}".encode(), Customer(IdKind.ACCOUNT, ACCOUNT), receipt)


def earned(outcome) -> int:
    return sum(campaign.points for campaign in outcome.body.calculation.campaigns)


# Each group as the log holds it: spends, a grant in a group with spends, releases (one too large).
GROUPS = [
    [CreateAccountOp("create", b"d:create", ACCOUNT)],
    [purchase(1), purchase(2), purchase(3)],  # 2 + 2 + 1: the share of 5 is spent
    [SliceGranted(BUDGET_KEY, 3), purchase(4)],  # the grant first: this purchase earns 2 of it
    [SliceReleased(BUDGET_KEY, 2, BUDGET_POINTS), purchase(5)],  # slack 1: refused, the purchase earns 1
    [SliceGranted(BUDGET_KEY, 4)],
    [SliceReleased(BUDGET_KEY, 3, BUDGET_POINTS), purchase(6)],  # slack 4: 3 leave, the purchase earns 1
]


def apply_groups(path) -> tuple[list, list[str], int]:
    ledger, placed = open_placed(path)
    try:
        outcomes = [placed.apply(list(group), T0_MS + number) for number, group in enumerate(GROUPS)]
        return outcomes, [ledger_digest(part) for part in ledger.parts], ledger.parts[0].escrow.nets[BUDGET_KEY]
    finally:
        ledger.close()


class TestSlices:
    def test_grants_and_releases_decide_the_spends_alike_on_every_copy(self, tmp_path):
        outcomes, digests, net = apply_groups(tmp_path / "copy-1")
        again, digests_again, net_again = apply_groups(tmp_path / "copy-2")
        assert digests == digests_again
        assert [[o.code for o in group] for group in outcomes] == [[o.code for o in group] for group in again]
        assert [earned(o) for o in outcomes[1]] == [2, 2, 1]
        assert earned(outcomes[2][1]) == 2
        assert outcomes[3][0].code == Code.FAILED_PRECONDITION
        assert earned(outcomes[3][1]) == 1
        assert outcomes[5][0].code == Code.OK
        assert earned(outcomes[5][1]) == 1
        assert net == 3 + 4 - 3
        assert net_again == net

    def test_the_slice_is_read_back_from_the_partition_after_a_restart(self, tmp_path):
        apply_groups(tmp_path / "copy")
        ledger, _ = open_placed(tmp_path / "copy")
        try:
            assert ledger.parts[0].escrow.nets == {BUDGET_KEY: 4}
            assert ledger.parts[0].escrow.slice_of(BUDGET_KEY, BUDGET_POINTS) == 5 + 4
        finally:
            ledger.close()

    def test_a_release_of_what_is_not_a_shared_counter_is_refused(self, tmp_path):
        ledger, placed = open_placed(tmp_path / "copy")
        try:
            (outcome,) = placed.apply([SliceGranted(b"c:budget\0S1", 3)], T0_MS)
            assert outcome.code == Code.INVALID_ARGUMENT
            assert ledger.parts[0].escrow.nets == {}
        finally:
            ledger.close()


class TestTakeShare:
    def test_a_taker_takes_the_whole_bank_when_alone_and_its_part_when_others_want(self):
        assert take_share(BankEntry(10, 60, ()), 0, 60) == BankEntry(0, 60, ())
        assert take_share(BankEntry(10, 60, (1, 2)), 0, 60) == BankEntry(6, 60, (1, 2))  # ceil(10 / 3) taken
        assert take_share(BankEntry(1, 60, (0, 1)), 0, 60) == BankEntry(0, 60, (1,))  # the last unit goes too

    def test_an_empty_bank_marks_the_counter_wanted_once(self):
        assert take_share(BankEntry(0, 60, (1,)), 0, 60) == BankEntry(0, 60, (1, 0))
        assert take_share(BankEntry(0, 60, (1, 0)), 0, 60) is None


RACERS = BANK_CAS_TRIES_MAX - 2  # each conflict lets one through: all of them land within the tries


def test_concurrent_changes_of_a_bank_entry_are_each_applied_once(nats_one):
    """Compare-and-set: releases of 1 unit racing on one entry all land, each once; an entry left
    with nothing in motion is deleted."""

    async def race() -> tuple[list, BankEntry, int | None]:
        async with jetstream(nats_one, replicas=1) as (_, js, _):
            kv = await js.key_value(ESCROW_BUCKET)
            add = lambda entry: BankEntry(entry.units + 1, 60, entry.wanted_by)  # noqa: E731
            changes = await asyncio.gather(*(change_entry(kv, BUDGET_KEY, add) for _ in range(RACERS)))
            after_adds, _ = await read_entry(kv, BUDGET_KEY)
            await change_entry(kv, BUDGET_KEY, lambda entry: take_share(entry, 0, 60))
            _, revision = await read_entry(kv, BUDGET_KEY)
            return changes, after_adds, revision

    changes, after_adds, revision = asyncio.run(race())
    assert None not in changes
    assert after_adds.units == RACERS
    assert revision is None  # taken whole, wanted by none: deleted
