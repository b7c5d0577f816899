"""How long the ledger remembers a request, and what it answers once it no longer can.

Two windows, both counted from when the ledger applied the request:

- Inside the replay window (`ledger.replay_window_s`) a retry is answered from the stored answer,
  byte for byte, as DESIGN §3 promises.
- Past it, compaction (core_ext/compaction.py) replaces the stored answer by a `RetainedRec`: the
  digest, the transaction id and the time, kept in the `retained` database (not `idempotency`). A retry then gets FAILED_PRECONDITION ANSWER_NOT_KEPT,
  naming the request id: it is never applied twice, and the POS learns that the original was
  recorded (its transaction id is in the message) but its answer is gone. A return or rollback by
  `original_request_id` still finds the transaction.
- Past the return window (`ledger.return_window_s`) the record leaves the ledger, tombstones too.

A very late retry is recognised by the time it carries: Accrue, Redeem and Rollback take an
`occurred_at` (when the POS made the request, the same on every retry). A request whose
`occurred_at` is older than the return window is refused with FAILED_PRECONDITION REQUEST_TOO_OLD
before anything else is looked at, remembered or not: the ledger cannot tell whether it forgot it.
A request without `occurred_at` is taken as made when it arrives. That keeps every client written
before the field working; the return window (90 days by default) is far longer than any offline
queue a POS keeps, and a POS that may hold requests longer must send `occurred_at`.

Records are forgotten a little later than the window (OCCURRED_AT_AHEAD_MAX_S): a POS clock ahead
of the server by up to that much still has its retry refused rather than applied again, and one
further ahead is refused outright (INVALID_ARGUMENT).
"""

from __future__ import annotations

import msgspec

from kassa.core_ext import records as rec
from kassa.core_ext.model import Code, Reason, rejected

SECOND_MS = 1000  # milliseconds
# A POS queue may replay a week-old request (a store offline over a long weekend, a terminal sent
# back for repair): its answer is kept that long. It costs the answer's bytes for a week of traffic.
REPLAY_WINDOW_S_DEFAULT = 7 * 86_400  # seconds
# Returns by original_request_id: most return policies end within 90 days. A return after it can
# still name the transaction by its id.
RETURN_WINDOW_S_DEFAULT = 90 * 86_400  # seconds
# How far a POS clock may run ahead of the server's: occurred_at later than now by more than this
# is refused, and records are forgotten this much after the return window.
OCCURRED_AT_AHEAD_MAX_S = 300  # seconds

_encode = msgspec.msgpack.Encoder().encode
_RETAINED_BYTE = bytes([rec.IDEMPOTENCY_RETAINED_V1])


class Retention(msgspec.Struct, frozen=True):
    """The windows, in ms (the config gives seconds)."""

    replay_window_ms: int = REPLAY_WINDOW_S_DEFAULT * SECOND_MS
    return_window_ms: int = RETURN_WINDOW_S_DEFAULT * SECOND_MS

    @classmethod
    def of_seconds(cls, replay_window_s: int, return_window_s: int) -> "Retention":
        if not 0 < replay_window_s <= return_window_s:
            raise ValueError(f"replay window {replay_window_s} s must be > 0 and within the return window "
                             f"{return_window_s} s")
        return cls(replay_window_s * SECOND_MS, return_window_s * SECOND_MS)

    def forget_before_ms(self, now_ms: int) -> int:
        """Records applied at or before this time may leave the ledger."""
        return now_ms - self.return_window_ms - OCCURRED_AT_AHEAD_MAX_S * SECOND_MS

    def age_refusal(self, op, now_ms: int):
        """The refusal of a request too old (or too far ahead) to be checked against what the
        ledger remembers; None for one it can check. Only for an op with `occurred_at_ms` set."""
        occurred_at_ms = op.occurred_at_ms
        if occurred_at_ms > now_ms + OCCURRED_AT_AHEAD_MAX_S * SECOND_MS:
            return rejected(Code.INVALID_ARGUMENT,
                            f"occurred_at: {occurred_at_ms} ms is more than {OCCURRED_AT_AHEAD_MAX_S} s after the "
                            f"server's time {now_ms} ms; check the terminal's clock")
        if occurred_at_ms <= now_ms - self.return_window_ms:
            return rejected(Code.FAILED_PRECONDITION,
                            f"request_id '{op.request_id}': occurred_at is older than the return window "
                            f"({self.return_window_ms // SECOND_MS} s); the ledger may no longer remember it, so it "
                            "is not applied; settle it by hand (Accounts.Adjust)",
                            Reason.REQUEST_TOO_OLD)
        return None


def answer_not_kept(op, record: rec.RetainedRec):
    """A retry (same payload) of a request whose answer was dropped past the replay window."""
    made = f"transaction {record.txn_id}" if record.txn_id else "a refusal"
    return rejected(Code.FAILED_PRECONDITION,
                    f"request_id '{op.request_id}' was applied before ({made}); its answer is no longer kept "
                    "(past the replay window), and it is not applied again",
                    Reason.ANSWER_NOT_KEPT)


def retained(record, at_ms: int) -> bytes:
    """The stored form of `record` (any idempotency record but a tombstone) past the replay window."""
    return _RETAINED_BYTE + _encode(rec.RetainedRec(record.digest, record.txn_id, at_ms))


def aging_key(at_ms: int, request_key: bytes) -> bytes:
    """The key in the `aging` database of a record no journal entry dates (a refusal, a
    tombstone), or of one whose answer compaction dropped: the time first, so that compaction
    reads them oldest first."""
    return at_ms.to_bytes(8, "big") + request_key


def aging_time_ms(key: bytes) -> int:
    return int.from_bytes(key[:8], "big")
