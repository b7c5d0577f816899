"""A cluster of several partitions: each operation goes to its partition's owner.

Every node serves every call with the single-node partition router (server/partition_commit.py:
the directory look-up, the outbox relay, moves, what goes to every partition). The router hands
each partition's operations to a `RoutedCommitter`: the partition's own GroupCommitter (through its
log) when this node owns it, else the owner's, over gRPC (`COMMIT_METHOD`, the operations and
outcomes as msgpack, the way they are logged). After a commit made elsewhere the node applies the
partition's log up to that commit before it answers (not for a purchase or a redemption: the
owner's outcome answers them whole, and a read catches up first), so a caller reading through the
same node sees its write. Reads are served by each node's own copy of the partition, which `SyncInterceptor`
first brings to the log's end (only what the call reads: server/cluster/sync.py): a read through
any node sees every commit acknowledged before it.
"""

from __future__ import annotations

import contextvars
import hmac
import time

import grpc
import msgspec

from kassa.core_ext.model import AccrueOp, Code, Outcome, Reason, RedeemOp, rejected
from kassa.server.cluster.group_record import LoggedOperation, OutboxSettled
from kassa.server.cluster.sync import BY_CUSTOMER, customer_of
from kassa.server.partition_commit import PartitionedCommitter

SERVICE = "kassa.cluster.Partitions"
COMMIT_METHOD = f"/{SERVICE}/Commit"
CLUSTER_KEY_METADATA = "x-kassa-cluster-key"  # cluster.internal_key, on every call between nodes
REMOTE_COMMIT_S_MAX = 20.0  # an owner's commit (its log's acknowledgement included) for another node,
# for work no caller waits on with a deadline (a stream's, the relay's, JetStream events); else the caller's
CATCH_UP_WAIT_S_MAX = 2.0  # after a commit made by the owner, this node applies the log up to it
SYNC_WAIT_S_MAX = 1.0  # before a call, each partition it reads that this node does not own is brought to its log's end
SYNCED_SERVICES = "/kassa.v1."  # health and reflection answer at once
# Operations answered whole by the owner's outcome, which the router reads nothing back of: after
# the owner committed them this node does not wait to apply them (a read through it catches up first).
ANSWERED_BY_OWNER = (AccrueOp, RedeemOp)


# The monotonic time by which the kassa.v1 call being served must be answered (its gRPC deadline);
# None: it has none. An owner's commit for it waits no longer (the deadline travels with the call).
CALL_DEADLINE_S: contextvars.ContextVar[float | None] = contextvars.ContextVar("kassa_call_deadline_s", default=None)


def remote_commit_timeout_s() -> float:
    """How long an owner's commit may take: the caller's time left, at most REMOTE_COMMIT_S_MAX."""
    deadline_s = CALL_DEADLINE_S.get()
    if deadline_s is None:
        return REMOTE_COMMIT_S_MAX
    return max(0.0, min(REMOTE_COMMIT_S_MAX, deadline_s - time.monotonic()))


class CommitRequest(msgspec.Struct, array_like=True, frozen=True):
    partition: int
    ops: tuple[LoggedOperation, ...]


class CommitReply(msgspec.Struct, array_like=True, frozen=True):
    sequence: int  # the owner's applied log sequence after the commit
    outcomes: tuple[Outcome, ...]


_encode = msgspec.msgpack.Encoder().encode
_decode_request = msgspec.msgpack.Decoder(CommitRequest).decode
_decode_reply = msgspec.msgpack.Decoder(CommitReply).decode


def _unavailable(ops, message: str) -> list[Outcome]:
    return [rejected(Code.UNAVAILABLE, message, Reason.NONE)] * len(ops)


class RoutedCommitter:
    """One partition's committer on every node: local when this node owns it, else the owner's."""

    def __init__(self, node, partition: int, local, channels):
        self._node = node
        self._partition = partition
        self._local = local
        self._channels = channels

    async def submit(self, ops: list, abort_in_flight: bool = True) -> list[Outcome]:
        node, partition = self._node, self._partition
        if node.owners[partition].serving():
            return await self._local.submit(ops, abort_in_flight)
        address = node.owner_addresses[partition]
        if address is None:
            return _unavailable(ops, f"partition {partition} has no owner this node can reach (a failover is "
                                     "under way); this was not recorded: send it again, with the same request_id")
        call = self._channels.get(address).unary_unary(COMMIT_METHOD)
        try:
            reply = _decode_reply(await call(_encode(CommitRequest(partition, tuple(ops))),
                                             timeout=remote_commit_timeout_s(), metadata=self._channels.metadata))
        except grpc.aio.AioRpcError as error:
            return _unavailable(ops, f"partition {partition}'s owner cannot be reached ({error.details()}); this "
                                     "may or may not have been recorded: send it again with the same request_id")
        if not all(type(op) in ANSWERED_BY_OWNER for op in ops):  # e.g. a move: the router reads its record here
            await node.caught_up(partition, reply.sequence, CATCH_UP_WAIT_S_MAX)
        return list(reply.outcomes)

    def __getattr__(self, name):
        """start, drain, stop, idle, the counts: the local committer's."""
        return getattr(self._local, name)


class SyncInterceptor(grpc.aio.ServerInterceptor):
    """Before each kassa.v1 call (a stream: when it opens), the node's copies of the partitions the
    call reads catch up with their logs (server/cluster/sync.py says which; at most SYNC_WAIT_S_MAX:
    past it the call goes on with the copy as far as it got, NATS is slow or gone)."""

    def __init__(self, node, channels):
        self._node = node
        self._channels = channels  # the RoutedCommitters' to the owners: closed with this after the drain

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not method.startswith(SYNCED_SERVICES):
            return await continuation(handler_call_details)
        by_customer = BY_CUSTOMER.get(method)
        if by_customer is None:  # reads across partitions: every copy to its log's end
            await self._node.read_synced(SYNC_WAIT_S_MAX)
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return self._unary_unary(handler, by_customer)

    def _unary_unary(self, handler, by_customer: tuple[type, bool] | None):
        """The handler, with its call's deadline noted for the owners' commits (CALL_DEADLINE_S) and,
        for a call naming one customer, the copy it reads brought up to date first."""
        node, behavior = self._node, handler.unary_unary

        async def unary_unary(request, context):
            remaining_s = context.time_remaining()
            if remaining_s is not None:
                CALL_DEADLINE_S.set(time.monotonic() + remaining_s)
            if by_customer is not None:
                message_type, reads = by_customer
                customer = customer_of(request, message_type)
                if customer is None:
                    await node.read_synced(SYNC_WAIT_S_MAX)
                else:
                    await node.synced_for(customer, reads, SYNC_WAIT_S_MAX)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                   handler.response_serializer)

    async def close(self) -> None:
        await self._channels.close()


class Channels:
    """One plaintext channel per owner address seen (a node's address does not change), and the
    metadata every call on them carries: the cluster's credential, when it has one."""

    def __init__(self, message_bytes_max: int, internal_key: str = ""):
        self._options = [("grpc.max_receive_message_length", message_bytes_max),
                         ("grpc.max_send_message_length", message_bytes_max)]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.metadata = ((CLUSTER_KEY_METADATA, internal_key),) if internal_key else ()

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=self._options)
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def commit_handler(node, local_committers, internal_key: str = "") -> grpc.GenericRpcHandler:
    """The owner's side of COMMIT_METHOD: commit the operations in the partition's own committer,
    when this node still owns it (else UNAVAILABLE outcomes: the caller's node retries elsewhere).
    With `internal_key` (cluster.internal_key) only a call carrying it is served: UNAUTHENTICATED."""
    wanted_key = internal_key.encode()

    async def commit(request: bytes, context) -> bytes:
        if wanted_key:
            given = dict(context.invocation_metadata() or ()).get(CLUSTER_KEY_METADATA, "")
            if not hmac.compare_digest(given.encode(), wanted_key):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{CLUSTER_KEY_METADATA}: missing or not this "
                                    "cluster's cluster.internal_key (calls between nodes only)")
        try:
            wanted = _decode_request(request)
        except msgspec.DecodeError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a commit request ({error})")
        partition = wanted.partition
        if not 0 <= partition < len(local_committers):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"partition: {partition} is not one of this "
                                                                  f"cluster's {len(local_committers)}")
        owner = node.owners[partition]
        if not owner.serving():
            outcomes = _unavailable(wanted.ops, f"this node does not hold partition {partition}'s lease; send it again")
        else:
            outcomes = await local_committers[partition].submit(list(wanted.ops))
        return _encode(CommitReply(owner.replica.applied_sequence, tuple(outcomes)))

    return grpc.method_handlers_generic_handler(SERVICE, {"Commit": grpc.unary_unary_rpc_method_handler(commit)})


class _Writers:
    """A PartitionedLedger whose partitions' writers log their groups (LoggedLedger)."""

    def __init__(self, ledger, writers):
        self._ledger = ledger
        self.writers = writers

    def __getattr__(self, name):
        return getattr(self._ledger, name)


class ClusterPartitionedCommitter(PartitionedCommitter):
    """The router whose outbox bookkeeping goes through the source partition's log too."""

    async def mark_relayed(self, index: int, done: list) -> int:
        if not done:
            return 0
        (outcome,) = await self.committers[index].submit([OutboxSettled(relayed=tuple(done))])
        return len(done) if outcome.code == Code.OK else 0

    async def forget_move(self, source: int, join_request_id: str) -> None:
        await self.committers[source].submit([OutboxSettled(moves_done=(join_request_id,))])


def routed_committer(node, ledger, clock, batch_max: int, wait_us_max: int, metrics, channels):
    """The single-node partition router over RoutedCommitters; (it, each partition's own committer)."""
    logged = [node.logged_ledger(partition) for partition in range(node.partitions)]
    committer = ClusterPartitionedCommitter(_Writers(ledger, logged), clock, batch_max, wait_us_max, metrics)
    local = list(committer.committers)
    committer.committers[:] = [RoutedCommitter(node, partition, own, channels) for partition, own in enumerate(local)]
    return committer, local
