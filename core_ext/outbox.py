"""Partitions: the outbox of events whose related customer is in another partition.

An event in partition A whose `related` customer is in partition B writes the related customer's
share into A's `outbox` database, in the same transaction as the event (core_ext/ledger/events.pxi).
A relay (server/relay.py) later credits it in B under a request id derived from the event's
(`related_request_id`), so a relay run twice, or again after a crash, is applied once. A rollback of
the event in A turns its record back into work (`REVERSE`): the relay then rolls B's credit back too.

Keys: `w:<request id>` work to relay (state PENDING or REVERSE); `d:<request id>` credited in B and
kept, so that a later rollback of the event can be relayed as well.
"""

from __future__ import annotations

import enum

import msgspec

OUTBOX_DB = b"outbox"
WORK_PREFIX, DONE_PREFIX = b"w:", b"d:"
MOVE_PREFIX = b"m:"  # a member moving to its group's partition (core_ext/ledger/moves.pxi), by the join's request id
MOVE_OUT_SUFFIX = "/move-out"  # the request id of taking it out: the join's and this
RELATED_SUFFIX = "/related"  # the related credit's request id: the event's and this
ROLLBACK_SUFFIX = "/rollback"  # the rollback of that credit: the credit's request id and this


class OutboxState(enum.IntEnum):
    PENDING = 1  # to credit in the related customer's partition
    REVERSE = 2  # the event was rolled back: roll the credit back there (a tombstone if it never came)
    CREDITED = 3  # done: kept under DONE_PREFIX


class OutboxRec(msgspec.Struct, array_like=True, gc=False):
    state: int
    account_id: str  # the related customer's account
    points: int
    event_type: str
    ruleset_version: str = ""
    activate_at_ms: int = 0
    expire_at_ms: int = 0
    actor: str = ""


encode_outbox = msgspec.msgpack.Encoder().encode
decode_outbox = msgspec.msgpack.Decoder(OutboxRec).decode


def related_request_id(event_request_id: str) -> str:
    return event_request_id + RELATED_SUFFIX


def work_key(event_request_id: str) -> bytes:
    return WORK_PREFIX + event_request_id.encode()


def done_key(event_request_id: str) -> bytes:
    return DONE_PREFIX + event_request_id.encode()


def reversed_record(get, str_request_id: str):
    """The (key, record) that a rollback of the event `str_request_id` leaves in the outbox, or
    None when the event relayed nothing. `get(key)` reads the outbox."""
    key = work_key(str_request_id)
    stored = get(key)
    if stored is None:
        stored = get(done_key(str_request_id))
    if stored is None:
        return None
    record = decode_outbox(stored)
    record.state = OutboxState.REVERSE
    return key, encode_outbox(record)


def read_move(ledger, join_request_id: str):
    """The `MoveInOp` waiting in `ledger`'s outbox for the join `join_request_id`, or None."""
    from kassa.core_ext.model import MoveInOp

    txn, dbs = ledger.raw_transaction()
    with txn:
        stored = txn.get(MOVE_PREFIX + join_request_id.encode(), db=dbs["outbox"])
    return None if stored is None else msgspec.msgpack.Decoder(MoveInOp).decode(stored)


def pending_moves(ledger) -> list:
    """Every `MoveInOp` waiting in `ledger`'s outbox."""
    from kassa.core_ext.model import MoveInOp

    decode = msgspec.msgpack.Decoder(MoveInOp).decode
    txn, dbs = ledger.raw_transaction()
    moves = []
    with txn, txn.cursor(db=dbs["outbox"]) as cursor:
        if cursor.set_range(MOVE_PREFIX):
            for key, value in cursor:
                if not key.startswith(MOVE_PREFIX):
                    break
                moves.append(decode(value))
    return moves


def forget_move(ledger, join_request_id: str) -> None:
    _, dbs = ledger.raw_transaction()  # (a transaction not begun until entered)
    with ledger.env.begin(write=True) as txn:
        txn.delete(MOVE_PREFIX + join_request_id.encode(), db=dbs["outbox"])
