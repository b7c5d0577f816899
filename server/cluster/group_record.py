"""A logged commit group: everything that decides its outcome, so that every replica applying it
reaches the same ledger.

`ops` are the ledger's own operation structs (tagged msgspec structs, core_ext/model.py), encoded as
msgpack; `now_ms` is the time the owner applied the group at; `ruleset_version` the version its
ledger served (a replica serving another refuses the group rather than diverge); `token` the
owner's lease token (the lease entry's revision when it was taken), which tells a reader who wrote
the group. The log, not the token, decides which writer wins: see partition_log.
"""

from __future__ import annotations

import msgspec

from kassa.core_ext.model import MoveInOp, MoveOutOp, Operation, RelatedCreditOp

OUTBOX_SETTLED_TAG = 100  # above every tag of core_ext/model.py's operations
SLICE_GRANTED_TAG = 101
SLICE_RELEASED_TAG = 102


class OutboxSettled(msgspec.Struct, array_like=True, frozen=True, tag=OUTBOX_SETTLED_TAG):
    """Partitions in a cluster: outbox records of the group's partition that are done with, which
    the single-node relay deletes outside any group (server/relay.py `mark_done`, core_ext/outbox.py
    `forget_move`); logged so that every copy of the partition settles them alike."""

    request_id: str = ""  # none: the group committer never takes it for a retry of another
    relayed: tuple[tuple[str, int], ...] = ()  # (the event's request id, the state it was relayed in)
    moves_done: tuple[str, ...] = ()  # the joins whose member's move is finished


class SliceGranted(msgspec.Struct, array_like=True, frozen=True, tag=SLICE_GRANTED_TAG):
    """Partitions in a cluster: `units` of the shared counter `key` (a budget `B:`, a code's total
    uses `C:`) taken from the escrow bank (server/cluster/escrow_bank.py) join the group's
    partition's slice. Logged after the bank gave them, so every copy of the partition grows alike."""

    key: bytes
    units: int
    request_id: str = ""  # none: the group committer never takes it for a retry of another


class SliceReleased(msgspec.Struct, array_like=True, frozen=True, tag=SLICE_RELEASED_TAG):
    """Partitions in a cluster: `units` of the partition's unspent slice of `key` leave it, for the
    escrow bank. Refused (FAILED_PRECONDITION, nothing released) when the slice's slack at `cap`
    no longer covers them: only an applied release is then added to the bank."""

    key: bytes
    units: int
    cap: int  # the shared counter's cap the releaser saw: the slice is this partition's share of it and its grants
    request_id: str = ""


# Besides the operations a client's call makes: what the partition router writes across partitions.
LoggedOperation = Operation | RelatedCreditOp | MoveOutOp | MoveInOp | OutboxSettled | SliceGranted | SliceReleased


class LoggedGroup(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    partition: int
    token: int
    now_ms: int
    ruleset_version: str
    ops: tuple[LoggedOperation, ...]  # empty: the marker a new owner writes when it takes the lease


_encode = msgspec.msgpack.Encoder().encode
_decoder = msgspec.msgpack.Decoder(LoggedGroup)


def encode_group(group: LoggedGroup) -> bytes:
    return _encode(group)


def decode_group(data: bytes) -> LoggedGroup:
    return _decoder.decode(data)
