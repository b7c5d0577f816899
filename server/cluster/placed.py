"""A partitioned ledger in a cluster: what the single-node code writes outside a partition's LMDB,
made deterministic so that every node's copy is the same.

- The directory (account, card, phone -> partition) is derived from the partitions' logs: every node
  applies every partition's groups, and `PlacedLedger.apply` records the entries a group made (its
  accounts, phones and cards, a moved member's forward) in the node's own directory, as a
  partition's writer does on a single node. The partition stays the truth (the directory is
  repaired from it at open).
- The escrow banks are not used: a shared budget's or a code's total uses cap is split between the
  partitions once, evenly (`SplitEscrow`), so a partition's spends depend on its own log only. The
  partitions together never spend past the cap; unlike the single node's banks, a partition whose
  share is spent refuses while another still has some of its share left.
- The outboxes (an event's related share, a moving member) are relayed by the owner of their
  partition, and what the single-node relay deletes outside any group is logged (`OutboxSettled`).
"""

from __future__ import annotations

from kassa.core_ext.escrow import SHARED_PREFIXES
from kassa.core_ext.model import Code, CreateAccountOp, IdKind, IssueCardOp, MoveInOp, Outcome
from kassa.core_ext.outbox import forget_move
from kassa.core_ext.partitions import place_key
from kassa.server.cluster.group_record import OutboxSettled
from kassa.server.relay import mark_done

MOVE_SETTLED_CODES = (Code.OK, Code.FAILED_PRECONDITION)  # a move-in applied now, or before (finish_move's)


def split_share(cap: int, partition: int, partitions: int) -> int:
    """Partition `partition`'s share of `cap`: cap // P, one more for the first cap % P partitions."""
    return cap // partitions + (1 if partition < cap % partitions else 0)


class SplitEscrow:
    """The face of core_ext/escrow.py's `Escrow` that the ledger calls, with fixed shares: what a
    partition may spend of a shared counter is its share of the cap, whatever the others spent."""

    def __init__(self, partition: int, partitions: int):
        self.partition = partition
        self._partitions = partitions

    def begin_group(self) -> None:
        pass

    def left(self, key: bytes, cap: int, spent: int) -> int:
        if not key.startswith(SHARED_PREFIXES):
            return cap - spent
        return split_share(cap, self.partition, self._partitions) - spent

    def spend(self, key: bytes, spent: int, delta: int) -> None:
        pass  # `left` allowed it: within the share


def split_budgets(ledger) -> None:
    """Each partition of `ledger` (a PartitionedLedger) spends shared counters from its fixed share."""
    for index, part in enumerate(ledger.parts):
        part.escrow = SplitEscrow(index, len(ledger.parts))


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
        if any(type(op) is OutboxSettled for op in ops):
            return self._apply_settling(ops, now_ms, meta)
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

    def _apply_settling(self, ops: list, now_ms: int, meta) -> list:
        """The outbox records first (settling one again is harmless), then the group's operations
        with its log position: a crash in between applies the whole group again at the next start."""
        for op in ops:
            if type(op) is OutboxSettled:
                mark_done(self.ledger, list(op.relayed))
                for join_request_id in op.moves_done:
                    forget_move(self.ledger, join_request_id)
        rest = iter(self.apply([op for op in ops if type(op) is not OutboxSettled], now_ms, None, meta))
        return [Outcome(int(Code.OK)) if type(op) is OutboxSettled else next(rest) for op in ops]

    def __getattr__(self, name):
        return getattr(self.ledger, name)
