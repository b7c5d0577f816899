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

from kassa.core_ext.ledger import LedgerError
from kassa.core_ext.model import Code
from kassa.server.cluster.owner import NotOwner
from kassa.server.cluster.partition_log import APPEND_S_MAX, GroupTooLarge, LogUnavailable, StaleWriter

APPEND_WAIT_S_MAX = APPEND_S_MAX + 5.0  # the commit thread's wait for one append (its retries included)


class LoggedLedger:
    def __init__(self, owner, loop: asyncio.AbstractEventLoop):
        self._owner = owner
        self._loop = loop
        self.ledger = owner.replica.ledger

    def apply(self, ops: list, now_ms: int, take=None) -> list:
        if take is not None:  # no LMDB lock to wait for here: take what is queued now
            taken, now_ms = take()
            ops.extend(taken)
        return self._log_and_apply(ops, now_ms)

    def _log_and_apply(self, ops: list, now_ms: int) -> list:
        """Log `ops` as one group and apply it; a group the log refuses as too large for one message
        (checked before anything is published) goes as its two halves, in order."""
        appending = asyncio.run_coroutine_threadsafe(self._owner.append(ops, now_ms), self._loop)
        try:
            sequence, group = appending.result(APPEND_WAIT_S_MAX)
        except TimeoutError as error:
            appending.cancel()  # the owner settles whether it reached the log before its next append
            raise LedgerError(Code.UNAVAILABLE, f"partition {self._owner.partition}: no acknowledgement "
                                                f"within {APPEND_WAIT_S_MAX} s; send it again") from error
        except GroupTooLarge:
            if len(ops) <= 1:
                raise
            middle = len(ops) // 2
            return self._log_and_apply(ops[:middle], now_ms) + self._log_and_apply(ops[middle:], now_ms)
        except (NotOwner, StaleWriter, LogUnavailable) as error:
            raise LedgerError(Code.UNAVAILABLE, f"{error}; send it again") from error
        return self._owner.apply_appended(sequence, group)

    def __getattr__(self, name):
        """The rest of the Ledger's face (stats, reads, verify) is the local copy's."""
        return getattr(self.ledger, name)
