"""A partitioned ledger in a cluster: what the single-node code writes outside a partition's LMDB,
made deterministic so that every node's copy is the same.

- The directory (account, card, phone -> partition) is derived from the partitions' logs: every node
  applies every partition's groups, and `PlacedLedger.apply` records the entries a group made (its
  accounts, phones and cards, a moved member's forward) in the node's own directory, as a
  partition's writer does on a single node. The partition stays the truth (the directory is
  repaired from it at open).
- The single node's escrow banks in the directory are not used: a partition's spends must depend on
  its own log only. A shared budget's or a code's total uses cap is split between the partitions
  evenly, and a partition's **slice** is its share plus the units its log says it took from the
  cluster's bank less those it gave back (`SliceGranted`, `SliceReleased`: `SplitEscrow`). The bank
  is a JetStream key-value entry, moved outside any `apply` (server/cluster/escrow_bank.py). The
  partitions together never spend past the cap.
- The outboxes (an event's related share, a moving member) are relayed by the owner of their
  partition, and what the single-node relay deletes outside any group is logged (`OutboxSettled`).
"""

from __future__ import annotations

import time

from kassa.core_ext.escrow import SHARED_PREFIXES
from kassa.core_ext.model import Code, CreateAccountOp, IdKind, IssueCardOp, MoveInOp, Outcome, rejected
from kassa.core_ext.outbox import forget_move
from kassa.core_ext.partitions import place_key
from kassa.server.cluster.group_record import OutboxSettled, SliceGranted, SliceReleased
from kassa.server.cluster.replica import META_DB
from kassa.server.relay import mark_done

MOVE_SETTLED_CODES = (Code.OK, Code.FAILED_PRECONDITION)  # a move-in applied now, or before (finish_move's)


def split_share(cap: int, partition: int, partitions: int) -> int:
    """Partition `partition`'s share of `cap`: cap // P, one more for the first cap % P partitions."""
    return cap // partitions + (1 if partition < cap % partitions else 0)


SLICE_NET_PREFIX = b"escrow-net\0"  # meta database: a shared counter's units granted less released, per partition
SIDE_OPS = (OutboxSettled, SliceGranted, SliceReleased)  # logged bookkeeping, applied around the ledger's group


def _int(stored: bytes) -> int:
    return int.from_bytes(stored, "big", signed=True)


def read_nets(ledger) -> dict[bytes, int]:
    """Each shared counter's units granted less released to this partition, as its LMDB holds them."""
    with ledger.env.begin() as txn:  # through the ledger's resize gate
        meta = ledger.env.env.open_db(META_DB, txn=txn, create=False)
        with txn.cursor(db=meta) as cursor:
            if not cursor.set_range(SLICE_NET_PREFIX):
                return {}
            return {key[len(SLICE_NET_PREFIX):]: _int(value)
                    for key, value in cursor if key.startswith(SLICE_NET_PREFIX)}


def read_counter(ledger, key: bytes) -> int:
    """What the partition spent of counter `key`, committed."""
    txn, dbs = ledger.raw_transaction()
    with txn:
        stored = txn.get(key, db=dbs["counters"])
    return 0 if stored is None else _int(stored)


class SplitEscrow:
    """The face of core_ext/escrow.py's `Escrow` that the ledger calls: what a partition may spend of
    a shared counter is its slice (its share of the cap and its net grants from the bank), read from
    its own log's effects only. What the balancer needs is noted on the side (the owner's copy's)."""

    def __init__(self, partition: int, partitions: int, ledger=None):
        self.partition = partition
        self._partitions = partitions
        self._ledger = ledger  # the partition's: None, no grants (and no slice operations to apply)
        self.nets = {} if ledger is None else read_nets(ledger)  # updated after each applied group that changed one
        self._staged: dict[bytes, int] = {}  # the group being applied: its slices' new nets
        self.short: dict[bytes, int] = {}  # shared key -> its cap, when an evaluation found nothing left
        self.spent_at_s: dict[bytes, float] = {}  # shared key -> monotonic time of its last spend here

    def begin_group(self) -> None:
        pass

    def slice_of(self, key: bytes, cap: int) -> int:
        return split_share(cap, self.partition, self._partitions) + self._staged.get(key, self.nets.get(key, 0))

    def left(self, key: bytes, cap: int, spent: int) -> int:
        if not key.startswith(SHARED_PREFIXES):
            return cap - spent
        left = self.slice_of(key, cap) - spent
        if left <= 0:
            self.short[key] = cap
        return left

    def spend(self, key: bytes, spent: int, delta: int) -> None:
        if delta > 0 and key.startswith(SHARED_PREFIXES):  # `left` allowed it: within the slice
            self.spent_at_s[key] = time.monotonic()

    def stage(self, ops: list) -> tuple[list[Outcome], tuple]:
        """The slice operations' outcomes and the meta pairs that store the new nets, for a group
        about to be applied (its spends see the new slices: `left`). Decided from the operations
        and the partition's committed counters only, so every copy decides alike. A release the
        slack does not cover is refused whole."""
        nets: dict[bytes, int] = {}
        outcomes = []
        for op in ops:
            net = nets.get(op.key, self.nets.get(op.key, 0))
            if op.units <= 0 or not op.key.startswith(SHARED_PREFIXES):
                outcomes.append(rejected(Code.INVALID_ARGUMENT, f"units: {op.units} of {op.key!r}: not a shared "
                                                                "counter's positive amount"))
            elif type(op) is SliceGranted:
                nets[op.key] = net + op.units
                outcomes.append(Outcome(int(Code.OK)))
            elif op.units > self._slack(op.key, op.cap, net):
                outcomes.append(rejected(Code.FAILED_PRECONDITION, f"{op.key!r}: the slice's slack no longer "
                                                                   f"covers {op.units} units"))
            else:
                nets[op.key] = net - op.units
                outcomes.append(Outcome(int(Code.OK)))
        self._staged = nets
        return outcomes, tuple((SLICE_NET_PREFIX + key, net.to_bytes(8, "big", signed=True))
                               for key, net in nets.items())

    def _slack(self, key: bytes, cap: int, net: int) -> int:
        """What the slice of `key` at `cap` and `net` holds beyond the committed spends."""
        return split_share(cap, self.partition, self._partitions) + net - read_counter(self._ledger, key)

    def staged_done(self, applied: bool) -> None:
        """After the group's transaction: keep the staged nets if it committed."""
        if applied:
            self.nets.update(self._staged)
        self._staged = {}


def split_budgets(ledger) -> None:
    """Each partition of `ledger` (a PartitionedLedger) spends shared counters from its slice."""
    for index, part in enumerate(ledger.parts):
        part.escrow = SplitEscrow(index, len(ledger.parts), part)


def created_keys(op, outcome) -> list[bytes]:
    """The directory keys an applied creation makes (as PartitionWriter's `_record_places`)."""
    if type(op) is CreateAccountOp:
        account = [place_key(IdKind.ACCOUNT, outcome.body.account_id)]
        return account + [place_key(IdKind.PHONE, op.phone)] if op.phone else account
    if type(op) is IssueCardOp:
        return [place_key(IdKind.CARD, op.card)]
    return []


class PlacedLedger:
    """A partition's ledger as its replica applies to it: the group, then the directory entries
    the group made. The rest of the Ledger's face is the partition's."""

    def __init__(self, ledger, directory, index: int):
        self.ledger = ledger
        self._directory = directory
        self._index = index

    def apply(self, ops: list, now_ms: int, take=None, meta=()) -> list:
        if any(type(op) in SIDE_OPS for op in ops):
            return self._apply_with_side(ops, now_ms, meta)
        outcomes = self.ledger.apply(ops, now_ms, take, meta)
        # The partitions' logs are applied each at its own pace: a creation applied after the move
        # that took its account elsewhere must not undo the move's forward. So an entry is written
        # by a creation only where there is none, and only a move rewrites one.
        created = [(key, self._index) for op, outcome in zip(ops, outcomes) if outcome.code == Code.OK
                   for key in created_keys(op, outcome)]
        forwards = [(key, self._index) for op, outcome in zip(ops, outcomes)
                    if type(op) is MoveInOp and outcome.code in MOVE_SETTLED_CODES
                    for key in (place_key(IdKind.ACCOUNT, op.join.account_id), *(key for key, _ in op.idents))]
        if created:
            self._directory.record_missing(created)
        if forwards:
            self._directory.record(forwards)
        return outcomes

    def _apply_with_side(self, ops: list, now_ms: int, meta) -> list:
        """The outbox records first (settling one again is harmless), then the group's operations
        with its log position and the slices' new nets, in one transaction: a crash in between
        applies the whole group again at the next start."""
        for op in ops:
            if type(op) is OutboxSettled:
                mark_done(self.ledger, list(op.relayed))
                for join_request_id in op.moves_done:
                    forget_move(self.ledger, join_request_id)
        escrow = self.ledger.escrow
        slice_ops = [op for op in ops if type(op) in (SliceGranted, SliceReleased)]
        slice_outcomes, nets = escrow.stage(slice_ops)
        applied = False
        try:
            rest = self.apply([op for op in ops if type(op) not in SIDE_OPS], now_ms, None, (*meta, *nets))
            applied = True
        finally:
            escrow.staged_done(applied)
        rest, slices = iter(rest), iter(slice_outcomes)
        return [Outcome(int(Code.OK)) if type(op) is OutboxSettled else next(slices) if type(op) in SIDE_OPS
                else next(rest) for op in ops]

    def __getattr__(self, name):
        return getattr(self.ledger, name)
