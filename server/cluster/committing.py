"""The owner's commit path: GroupCommitter (server/commit.py) unchanged, over a ledger that logs
each group before it applies it.

`LoggedLedger` stands where GroupCommitter expects a `Ledger`: its `apply(ops, now_ms, take)`, called
in the commit thread, takes the queued operations and the time, appends them as one group to the
partition's log on the event loop, waits in the commit thread until the quorum stored it, then
applies it to the local ledger there. Callers are answered only after that, as on a single node.
A group the log refused or did not acknowledge is answered UNAVAILABLE; the owner settles it before
its next append (it may have reached the log late, and is then applied: a retry replays it).
A group too large for one log message (GROUP_BYTES_MAX) is logged and applied as several, in order.
"""

from __future__ import annotations

import asyncio

import msgspec

from kassa.core_ext.ledger import LedgerError
from kassa.core_ext.model import Code
from kassa.server.cluster.owner import NotOwner
from kassa.server.cluster.partition_log import APPEND_S_MAX, LogUnavailable, StaleWriter
from kassa.server.cluster.streams import GROUP_BYTES_MAX

APPEND_WAIT_S_MAX = APPEND_S_MAX + 5.0  # the commit thread's wait for one append (its retries included)
GROUP_HEADER_BYTES_MAX = 4096  # what a logged group adds to its operations (partition, time, ruleset, token)
_encode = msgspec.msgpack.Encoder().encode


class LoggedLedger:
    def __init__(self, owner, loop: asyncio.AbstractEventLoop):
        self._owner = owner
        self._loop = loop
        self.ledger = owner.replica.ledger

    def apply(self, ops: list, now_ms: int, take=None) -> list:
        if take is not None:  # no LMDB lock to wait for here: take what is queued now
            taken, now_ms = take()
            ops.extend(taken)
        outcomes = []
        for part in _parts_that_fit(ops):
            outcomes += self._log_and_apply(part, now_ms)
        return outcomes

    def _log_and_apply(self, ops: list, now_ms: int) -> list:
        appending = asyncio.run_coroutine_threadsafe(self._owner.append(ops, now_ms), self._loop)
        try:
            sequence, group = appending.result(APPEND_WAIT_S_MAX)
        except TimeoutError as error:
            appending.cancel()  # the owner settles whether it reached the log before its next append
            raise LedgerError(Code.UNAVAILABLE, f"partition {self._owner.partition}: no acknowledgement "
                                                f"within {APPEND_WAIT_S_MAX} s; send it again") from error
        except (NotOwner, StaleWriter, LogUnavailable) as error:
            raise LedgerError(Code.UNAVAILABLE, f"{error}; send it again") from error
        return self._owner.apply_appended(sequence, group)

    def __getattr__(self, name):
        """The rest of the Ledger's face (stats, reads, verify) is the local copy's."""
        return getattr(self.ledger, name)


def _parts_that_fit(ops: list) -> list[list]:
    """`ops` in order, cut into parts whose logged group fits one log message (halving a part that
    does not: a group commit of thousands of large receipts can pass NATS's message size)."""
    if len(ops) <= 1 or len(_encode(ops)) + GROUP_HEADER_BYTES_MAX <= GROUP_BYTES_MAX:
        return [ops]
    middle = len(ops) // 2
    return _parts_that_fit(ops[:middle]) + _parts_that_fit(ops[middle:])
