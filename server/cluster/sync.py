"""What a call needs brought up to date before it is served, in a cluster of several partitions.

A write is committed by its partition's owner, whose copy is the log's end: the node it entered
needs no catch-up, only its directory entry for the customer (an account, card or phone created
through another node is placed once this node applied that creation). A read of one customer
(GetBalance, GetAccount, ListTransactions, Calculate) needs the copy of that customer's partition
at the log's end. A call of any other method (creations, groups, events with a related customer,
rollbacks, batches, streams, admin) reads across partitions: every copy is brought to its end.
"""

from __future__ import annotations

from kassa.core_ext.model import Customer, IdKind
from kassa.v1 import accounts_pb2, processing_pb2

# The methods naming one customer (their request's `customer`) and whether they read its partition.
BY_CUSTOMER: dict[str, tuple[type, bool]] = {
    "/kassa.v1.Accounts/GetBalance": (accounts_pb2.GetBalanceRequest, True),
    "/kassa.v1.Accounts/GetAccount": (accounts_pb2.GetAccountRequest, True),
    "/kassa.v1.Accounts/ListTransactions": (accounts_pb2.ListTransactionsRequest, True),
    "/kassa.v1.Processing/Calculate": (processing_pb2.CalculateRequest, True),
    "/kassa.v1.Processing/Accrue": (processing_pb2.AccrueRequest, False),
    "/kassa.v1.Processing/Redeem": (processing_pb2.RedeemRequest, False),
}
ID_KINDS = {"account_id": IdKind.ACCOUNT, "card": IdKind.CARD, "phone": IdKind.PHONE}


def customer_of(request, message_type: type) -> Customer | None:
    """The customer a request names: from its bytes (a method that takes them, server/wire.pyx) or
    its message; None when it names none or is no valid message (the servicer refuses it then)."""
    if type(request) is bytes:
        try:
            request = message_type.FromString(request)
        except Exception:  # protobuf's DecodeError: the servicer answers INVALID_ARGUMENT
            return None
    if type(request) is not message_type:
        return None  # decode.py's marker of undecodable bytes
    field = request.customer.WhichOneof("id")
    return None if field is None else Customer(int(ID_KINDS[field]), getattr(request.customer, field))
