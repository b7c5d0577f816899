"""Group commit over partitions: one `GroupCommitter` (queue, thread, writer, sync) per partition.

`submit` sends each operation to the committer of its partition (core_ext/partitions.py says which)
and gives the outcomes back in the caller's order; the partitions' groups commit at the same time.
What every partition must see is sent to each: a ruleset (SetRulesOp), the expiry sweep, compaction,
new promo codes (generated in partition 0, then imported as the same codes by the others), and a Rollback by
request id whose original is in no partition (a tombstone in each, DESIGN §6).

Across partitions: an event whose related customer is in another partition goes to the customer's, its
related share to that partition's outbox (server/relay.py credits it where the related customer is);
a JoinGroup whose member is in another partition moves the member to the group's first
(`_join_moving`, core_ext/ledger/moves.pxi).
"""

from __future__ import annotations

import asyncio

from msgspec.structs import replace

from kassa.core_ext.model import (
    AccrueOp, AdjustOp, BlockCardOp, Code, CompactOp, CompactResult, CreateAccountOp, Customer, EventOp, IdKind,
    IssueCardOp, JoinGroupOp, LeaveGroupOp, MoveInOp, MoveOutOp, Outcome, PromoCodesOp, Reason, RedeemOp, RelatedCreditOp, RollbackKind,
    RollbackOp, SetAttributesOp, SweepOp, SweepResult, rejected,
)
from kassa.core_ext.outbox import MOVE_OUT_SUFFIX, forget_move, read_move
from kassa.core_ext.partitions import partition_of_txn, place_key
from kassa.core_ext.records import decode_idempotency
from kassa.server.commit import GroupCommitter
from kassa.server.relay import mark_done

EVERY_PARTITION = -1  # a route: the operation goes to every partition


class _Moving(tuple):
    """A route: a JoinGroup whose member (in partition `[0]`) moves to the group's (`[1]`)."""
BY_CUSTOMER = (AccrueOp, RedeemOp, SetAttributesOp, AdjustOp)


class _AllIdle:
    """`idle.wait()` of every partition's committer: no commit of this worker runs."""

    def __init__(self, committers):
        self._committers = committers

    async def wait(self) -> None:
        for committer in self._committers:
            await committer.idle.wait()


class PartitionedCommitter:
    def __init__(self, ledger, clock, batch_max: int, wait_us_max: int, metrics=None):
        self._ledger = ledger
        self._clock = clock
        # Called when a group may have left work in an outbox (an event whose related customer is in
        # another partition, a rollback of one): server/relay.py's `Relay.kick`.
        self.on_outbox = None
        self.committers = [GroupCommitter(writer, clock, batch_max, wait_us_max, metrics) for writer in ledger.writers]
        self.idle = _AllIdle(self.committers)

    @property
    def refusing(self) -> bool:
        return any(committer.refusing for committer in self.committers)

    @property
    def groups_committed(self) -> int:
        return sum(committer.groups_committed for committer in self.committers)

    @property
    def ops_committed(self) -> int:
        return sum(committer.ops_committed for committer in self.committers)

    def start(self) -> None:
        for committer in self.committers:
            committer.start()

    def drain(self, deadline_s: float) -> None:
        for committer in self.committers:
            committer.drain(deadline_s)

    async def stop(self) -> None:
        await asyncio.gather(*(committer.stop() for committer in self.committers))

    async def submit(self, ops: list, abort_in_flight: bool = True) -> list[Outcome]:
        outcomes: list = [None] * len(ops)
        routed: dict[int, list[int]] = {}
        everywhere, moving = [], []
        with self._ledger.directory.env.begin() as txn:  # one read transaction for every look-up
            routes = [self._route(op, txn) for op in ops]
        ops = list(ops)
        for position, route in enumerate(routes):
            if type(route) is tuple:  # (partition, the operation as it applies it); a _Moving is no plain tuple
                route, ops[position] = route
                routes[position] = route
            if isinstance(route, Outcome):
                outcomes[position] = route
            elif type(route) is _Moving:
                moving.append((position, route))
            elif route == EVERY_PARTITION:
                everywhere.append(position)
            else:
                routed.setdefault(route, []).append(position)
        answers = await asyncio.gather(*(
            self.committers[partition].submit([ops[position] for position in positions], abort_in_flight)
            for partition, positions in routed.items()))
        for positions, results in zip(routed.values(), answers):
            for position, outcome in zip(positions, results):
                outcomes[position] = outcome
        for position in everywhere:
            outcomes[position] = await self._everywhere(ops[position], abort_in_flight)
        for position, (source, target) in moving:
            outcomes[position] = await self._join_moving(ops[position], source, target, abort_in_flight)
        if self.on_outbox is not None and any(_may_leave_outbox_work(op, outcome) for op, outcome in zip(ops, outcomes)):
            self.on_outbox()
        return outcomes

    # -- Routes ------------------------------------------------------------------------------

    def _route(self, op, txn):
        """The partition of `op`, EVERY_PARTITION, or the refusal of what partitions cannot do yet."""
        ledger = self._ledger
        kind = type(op)
        if kind in BY_CUSTOMER:
            return ledger.partition_of(op.customer, txn)
        if kind is EventOp:
            return self._event_route(op, txn)
        if kind is CreateAccountOp:
            return self._create_route(op, txn)
        if kind is IssueCardOp:
            return self._card_route(op, txn)
        if kind is BlockCardOp:
            return ledger.partition_of(_customer(IdKind.CARD, op.card), txn)
        if kind is LeaveGroupOp:
            return ledger.partition_of(_customer(IdKind.ACCOUNT, op.account_id), txn)
        if kind is JoinGroupOp:
            return self._join_route(op, txn)
        if kind is RollbackOp:
            return self._rollback_route(op)
        if kind is RelatedCreditOp:
            return ledger.partition_of(_customer(IdKind.ACCOUNT, op.account_id), txn)
        return EVERY_PARTITION  # SetRulesOp, SweepOp, CompactOp, PromoCodesOp

    def _event_route(self, op, txn):
        """The customer's partition. A related customer in another one is named by its account id
        there, and its share goes to the event partition's outbox (server/relay.py credits it)."""
        partition = self._ledger.partition_of(op.customer, txn)
        if op.related is None:
            return partition
        related_partition = self._ledger.partition_of(op.related, txn)
        if related_partition == partition:
            return partition
        found = self._ledger.parts[related_partition].account(op.related, self._clock.now_ms())
        if found.code != Code.OK:  # "customer.card: no account ..." as the ledger says it of `related`
            return rejected(found.code, "related." + found.message.split(".", 1)[1], found.reason)
        related = _customer(IdKind.ACCOUNT, found.body.account_id)
        return partition, replace(op, related=related, related_elsewhere=True)

    def _create_route(self, op, txn):
        """By the account id, else by the request id (a retry names the same one: the same partition).
        A phone of another partition's account is refused here; within the partition, the ledger
        checks it (after replaying a retry) as with one ledger."""
        directory = self._ledger.directory
        if op.account_id:
            partition = self._ledger.partition_of(_customer(IdKind.ACCOUNT, op.account_id), txn)
        else:
            partition = directory.home(op.request_id)
        placed = directory.lookup(IdKind.PHONE, op.phone, txn) if op.phone else None
        if placed is not None and placed != partition:
            return rejected(Code.ALREADY_EXISTS, f"phone: phone '{op.phone}' belongs to another account")
        return partition

    def _card_route(self, op, txn):
        partition = self._ledger.partition_of(_customer(IdKind.ACCOUNT, op.account_id), txn)
        placed = self._ledger.directory.lookup(IdKind.CARD, op.card, txn)
        if placed is not None and placed != partition:
            return rejected(Code.ALREADY_EXISTS, f"card: card '{op.card}' is already issued")
        return partition

    def _join_route(self, op, txn):
        partition = self._ledger.partition_of(_customer(IdKind.ACCOUNT, op.parent_account_id), txn)
        member_partition = self._ledger.partition_of(_customer(IdKind.ACCOUNT, op.account_id), txn)
        if member_partition != partition:
            return _Moving((member_partition, partition))
        return partition

    # -- A member moving to its group's partition (core_ext/ledger/moves.pxi) -------------------

    async def _join_moving(self, op, source: int, target: int, abort_in_flight: bool) -> Outcome:
        """Take the member out of `source` (its records wait in the outbox), put it into the group's
        partition and join it there (`finish_move`). A retry after the move replays the join there."""
        parent = self._ledger.parts[target].account(_customer(IdKind.ACCOUNT, op.parent_account_id),
                                                    self._clock.now_ms())
        if parent.code != Code.OK:
            return rejected(Code.NOT_FOUND, f"parent_account_id: no account '{op.parent_account_id}'")
        if parent.body.parent_account_id:
            return rejected(Code.FAILED_PRECONDITION, "account_id: groups are one level deep and an account "
                            "belongs to at most one", Reason.ALREADY_IN_GROUP)
        leaving = MoveOutOp(op.request_id + MOVE_OUT_SUFFIX, op.digest, op, target, op.actor)
        (outcome,) = await self.committers[source].submit([leaving], abort_in_flight)
        if outcome.code != Code.OK:
            return outcome
        moving = read_move(self._ledger.parts[source], op.request_id)
        if moving is None:  # moved by an earlier try: the join replays in the group's partition
            return (await self.submit([op], abort_in_flight))[0]
        return await self.finish_move(source, moving, abort_in_flight)

    async def finish_move(self, source: int, moving: MoveInOp, abort_in_flight: bool = True) -> Outcome:
        """Into the group's partition, then the directory's forward, then out of `source`'s outbox:
        each step done again is harmless, so the relay finishes a move a crash cut short."""
        target = self._ledger.partition_of(_customer(IdKind.ACCOUNT, moving.join.parent_account_id))
        (outcome,) = await self.committers[target].submit([moving], abort_in_flight)
        if outcome.code not in (Code.OK, Code.FAILED_PRECONDITION):
            return outcome  # not applied (the disk, a drain): the outbox keeps it for the relay
        places = [(place_key(IdKind.ACCOUNT, moving.join.account_id), target)] + \
            [(key, target) for key, _ in moving.idents]
        await asyncio.to_thread(self._ledger.directory.record, places)
        await self.forget_move(source, moving.join.request_id)
        return outcome

    async def forget_move(self, source: int, join_request_id: str) -> None:
        """The finished move out of `source`'s outbox (a cluster logs it: server/cluster/routing.py)."""
        await asyncio.to_thread(forget_move, self._ledger.parts[source], join_request_id)

    async def mark_relayed(self, index: int, done: list) -> int:
        """Settle partition `index`'s relayed outbox records (server/relay.py `mark_done`)."""
        return await asyncio.to_thread(mark_done, self._ledger.parts[index], done)

    def _rollback_route(self, op):
        """By transaction id: its partition. By request id: the partition that holds the original's
        record (a tombstone is no original); none does: every partition (a tombstone in each)."""
        partitions = len(self.committers)
        if op.transaction_id:
            partition = partition_of_txn(op.transaction_id)
            if partition < partitions and self._holds_entry(partition, op.transaction_id):
                return partition
            # Since `kassa partitions split` an entry keeps its id wherever its account went.
            found = next((index for index in range(partitions) if self._holds_entry(index, op.transaction_id)), None)
            return found if found is not None else partition if partition < partitions else 0  # 0: NOT_FOUND
        key = op.original_request_id.encode()
        for partition, ledger in enumerate(self._ledger.parts):
            transaction, dbs = ledger.raw_transaction()
            with transaction as txn:  # past the replay window, the record is in `retained`
                stored = txn.get(key, db=dbs["idempotency"]) or txn.get(key, db=dbs["retained"])
            if stored is not None and decode_idempotency(stored).digest != b"":
                return partition
        return EVERY_PARTITION

    def _holds_entry(self, partition: int, txn_id: int) -> bool:
        transaction, dbs = self._ledger.parts[partition].raw_transaction()
        with transaction as txn:
            return txn.get(txn_id.to_bytes(8, "big"), db=dbs["journal"]) is not None

    # -- Every partition ------------------------------------------------------------------------

    async def _everywhere(self, op, abort_in_flight: bool) -> Outcome:
        if type(op) is PromoCodesOp:
            return await self._promo_codes(op, abort_in_flight)
        outcomes = await asyncio.gather(*(committer.submit([op], abort_in_flight) for committer in self.committers))
        outcomes = [outcome for (outcome,) in outcomes]
        if type(op) is SweepOp:
            return _swept(outcomes)
        if type(op) is CompactOp:
            return _compacted(outcomes)
        if type(op) is RollbackOp:  # the partition where the original was (it arrived meanwhile), else a tombstone
            return next((outcome for outcome in outcomes if not _tombstone(outcome)), outcomes[0])
        return next((outcome for outcome in outcomes if outcome.code != Code.OK), outcomes[0])

    async def _promo_codes(self, op, abort_in_flight: bool) -> Outcome:
        """Partition 0 makes the codes; the others import the same ones, under the same request id."""
        first, *others = self.committers
        (outcome,) = await first.submit([op], abort_in_flight)
        if outcome.code != Code.OK or not others:
            return outcome
        imported = replace(op, pattern="", charset="", count=0, codes=outcome.body.codes)
        for committer in others:
            (other,) = await committer.submit([imported], abort_in_flight)
            if other.code != Code.OK:
                return other
        return outcome


def _may_leave_outbox_work(op, outcome: Outcome) -> bool:
    kind = type(op)
    if outcome is None or outcome.code != Code.OK:
        return False
    return (kind is EventOp and op.related_elsewhere) or (kind is RollbackOp)


def _customer(kind: int, value: str) -> Customer:
    return Customer(kind, value)


def _tombstone(outcome: Outcome) -> bool:
    return outcome.code == Code.OK and outcome.body.kind == RollbackKind.PENDING_ORIGINAL


def _compacted(outcomes: list[Outcome]) -> Outcome:
    """One compaction step in every partition, as one: the sums, and more while any has more."""
    refused = next((outcome for outcome in outcomes if outcome.code != Code.OK), None)
    if refused is not None:
        return refused
    bodies = [outcome.body for outcome in outcomes]
    return Outcome(Code.OK, body=CompactResult(
        sum(body.answers_dropped for body in bodies), sum(body.requests_forgotten for body in bodies),
        sum(body.lots_removed for body in bodies), sum(body.holds_removed for body in bodies),
        any(body.more for body in bodies), sum(body.codes_removed for body in bodies),
        sum(body.counters_removed for body in bodies), max(body.step_us for body in bodies)))


def _swept(outcomes: list[Outcome]) -> Outcome:
    refused = next((outcome for outcome in outcomes if outcome.code != Code.OK), None)
    if refused is not None:
        return refused
    bodies = [outcome.body for outcome in outcomes]
    return Outcome(Code.OK, body=SweepResult(sum(body.accounts_settled for body in bodies),
                                             sum(body.expired_points for body in bodies),
                                             any(body.more for body in bodies)))
