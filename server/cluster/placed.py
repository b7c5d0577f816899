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
"""

from __future__ import annotations

from kassa.core_ext.escrow import SHARED_PREFIXES
from kassa.core_ext.model import Code, IdKind, MoveInOp
from kassa.core_ext.partitions import PartitionWriter, place_key

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


class PlacedLedger:
    """A partition's ledger as its replica applies to it: the group, then the directory entries
    the group made. The rest of the Ledger's face is the partition's."""

    def __init__(self, ledger, directory, index: int):
        self.ledger = ledger
        self._directory = directory
        self._index = index
        self._writer = PartitionWriter(ledger, directory, index)

    def apply(self, ops: list, now_ms: int, take=None, meta=()) -> list:
        outcomes = self.ledger.apply(ops, now_ms, take, meta)
        self._writer._record_places(ops, outcomes)  # noqa: SLF001 (the writer's own bookkeeping, shared)
        forwards = [(key, self._index) for op, outcome in zip(ops, outcomes)
                    if type(op) is MoveInOp and outcome.code in MOVE_SETTLED_CODES
                    for key in (place_key(IdKind.ACCOUNT, op.join.account_id), *(key for key, _ in op.idents))]
        if forwards:
            self._directory.record(forwards)
        return outcomes

    def __getattr__(self, name):
        return getattr(self.ledger, name)
