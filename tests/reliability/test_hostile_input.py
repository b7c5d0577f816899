"""Hostile input: whatever a client sends, the answer is a documented status and the server stays up.

Every RPC of kassa.v1.Processing and kassa.v1.Accounts gets, over a raw channel
(`request_serializer=lambda b: b`):
- hypothesis-generated messages of its request type (every field, recursively: huge and negative
  integers, unknown enum values, long and non-ASCII strings, empty or set oneofs, repeated fields);
- well-formed requests about a real account with one or two fields set to hostile values, so that
  the values get past the first checks and into the ledger;
- deterministically, every integer field (at any depth) at each edge of its wire type;
- raw random bytes, and valid messages mutated byte by byte.
The answer is OK or one of the documented refusals (DESIGN §3): INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, ALREADY_EXISTS, UNIMPLEMENTED — never UNKNOWN or INTERNAL (nor, inside a
ProcessBatch or a stream, CODE_INTERNAL for one operation); a refused request changes nothing (the
journal and account counts, and a known account's balance and statement, are the same after it);
the server stays SERVING and `kassa verify` exits 0. A message over server.message_bytes_max
(lowered to 64 KiB here) is RESOURCE_EXHAUSTED. StreamEvents gets generated event batches (acked
per event) and bytes that are not an EventBatch (the stream ends INVALID_ARGUMENT, never hangs).

Request ids in generated requests get a suffix per run (`uniquify`): an example never replays an
earlier one's idempotency record, so hypothesis sees the same answer when it re-runs a failure.
"""
from __future__ import annotations

import itertools

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kassa.core_ext import limits
from kassa.v1 import accounts_pb2, admin_pb2, admin_pb2_grpc, common_pb2, processing_pb2
from tests.kassa_harness import KassaServer
from tests.reliability import CALL_TIMEOUT_S, assert_verifies, health_status, purchase, spend
from tests.server.helpers import by_account, line, open_account, receipt, snapshot

MESSAGE_BYTES_MAX = 64 * 1024
KNOWN = "HOSTILE-1"  # an account with points; refused input must not move them
STREAM_TIMEOUT_S = 10  # a stream not answered by then is hanging
GARBAGE_STREAM_TIMEOUT_S = 4  # the same, for a stream that ought to be refused at once

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNIMPLEMENTED,
}
DOCUMENTED_ITEM_CODES = {
    common_pb2.CODE_OK, common_pb2.CODE_INVALID_ARGUMENT, common_pb2.CODE_NOT_FOUND,
    common_pb2.CODE_ALREADY_EXISTS, common_pb2.CODE_FAILED_PRECONDITION,
}
SERVICES = [
    processing_pb2.DESCRIPTOR.services_by_name["Processing"],
    accounts_pb2.DESCRIPTOR.services_by_name["Accounts"],
]
UNARY = [
    method for service in SERVICES for method in service.methods
    if not method.client_streaming and not method.server_streaming
]
STREAM_METHOD = "/kassa.v1.Processing/StreamEvents"
BATCH_METHOD = "/kassa.v1.Processing/ProcessBatch"


def path(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


# -- strategies for any protobuf message, from its descriptor -------------------------------------

F = pb_descriptor.FieldDescriptor
INT64 = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([2**63 - 1, -(2**63), 10**13, 10**13 + 1, -(10**13) - 1, 10**9 + 1, 2**31, -1]),
    st.integers(-(2**63), 2**63 - 1),
)
UINT64 = st.one_of(st.integers(0, 3), st.sampled_from([2**64 - 1, 2**63, 2**32]), st.integers(0, 2**64 - 1))
INT32 = st.one_of(st.integers(-3, 3), st.sampled_from([2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
UINT32 = st.one_of(st.integers(0, 3), st.sampled_from([2**32 - 1, 2**31]), st.integers(0, 2**32 - 1))
TEXT = st.one_of(
    st.sampled_from(["", KNOWN, "A", "hostile-req", " ", "\x00", "grocery/dairy", "COFFEE-1KG", "02-29", "13-45"]),
    st.text(max_size=12),
    st.text(min_size=60, max_size=700),  # past every byte limit, in any script
    st.text(alphabet="ж🙂中\u200b\ufeff", min_size=1, max_size=40),
)
SCALARS = {
    F.TYPE_INT64: INT64, F.TYPE_SINT64: INT64, F.TYPE_SFIXED64: INT64,
    F.TYPE_UINT64: UINT64, F.TYPE_FIXED64: UINT64,
    F.TYPE_INT32: INT32, F.TYPE_SINT32: INT32, F.TYPE_SFIXED32: INT32,
    F.TYPE_UINT32: UINT32, F.TYPE_FIXED32: UINT32,
    F.TYPE_BOOL: st.booleans(),
    F.TYPE_STRING: TEXT,
    F.TYPE_BYTES: st.binary(max_size=64),
    F.TYPE_DOUBLE: st.floats(allow_nan=True), F.TYPE_FLOAT: st.floats(width=32),
}
DEPTH_MAX = 4


def field_value(field, depth: int):
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == F.TYPE_ENUM:
        # proto3 enums are open: any int32 reaches the server
        return st.one_of(st.sampled_from([value.number for value in field.enum_type.values]), INT32)
    return SCALARS[field.type]


def messages(descriptor, depth: int = 0):
    cls = message_factory.GetMessageClass(descriptor)
    if depth > DEPTH_MAX:
        return st.just(cls())

    @st.composite
    def build(draw):
        message = cls()
        for field in descriptor.fields:
            if field.containing_oneof is not None:
                continue
            if field.is_repeated:
                if not draw(st.booleans()):
                    continue
                if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:  # map<scalar, scalar>
                    entry = field.message_type.fields_by_name
                    getattr(message, field.name).update(draw(st.dictionaries(
                        field_value(entry["key"], depth), field_value(entry["value"], depth), max_size=4
                    )))
                    continue
                getattr(message, field.name).extend(draw(st.lists(field_value(field, depth), max_size=4)))
                continue
            if not draw(st.booleans()):
                continue
            value = draw(field_value(field, depth))
            if field.type == F.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(value)
            else:
                setattr(message, field.name, value)
        for oneof in descriptor.oneofs:
            chosen = draw(st.sampled_from([None, *oneof.fields]))  # None: the oneof left empty
            if chosen is None:
                continue
            value = draw(field_value(chosen, depth))
            if chosen.type == F.TYPE_MESSAGE:
                getattr(message, chosen.name).CopyFrom(value)
            else:
                setattr(message, chosen.name, value)
        return message

    return build()


REQUESTS = {path(method): messages(method.input_type) for method in UNARY}
ID_FIELDS = {"request_id", "event_id"}
_example_numbers = itertools.count()


def uniquify(message):
    """Give the request ids in `message` a suffix of this run's own, so that an example never
    replays another one's idempotency record: hypothesis re-runs a failing example and must get
    the same answer again."""
    suffix = f"~{next(_example_numbers)}"

    def walk(node):
        for field, value in node.ListFields():
            if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
                continue  # a map of scalars holds no request id
            if field.type == F.TYPE_MESSAGE:
                for item in value if field.is_repeated else [value]:
                    walk(item)
            elif field.name in ID_FIELDS and value:
                size = len(value.encode())
                if size > limits.REQUEST_ID_BYTES_MAX or size + len(suffix) <= limits.REQUEST_ID_BYTES_MAX:
                    setattr(node, field.name, value + suffix)

    walk(message)
    return message


def valid_examples() -> dict[str, list[bytes]]:
    """One or two well-formed requests per RPC, about the known account, for mutation."""
    customer = by_account(KNOWN)
    examples = {
        "Calculate": processing_pb2.CalculateRequest(customer=customer, receipt=receipt(line(1, 2_000))),
        "Accrue": purchase(KNOWN, "mutant-accrue", 10),
        "Redeem": spend(KNOWN, "mutant-redeem", 10**6),
        "Rollback": processing_pb2.RollbackRequest(request_id="mutant-rollback", original_request_id="fund",
                                                   return_lines=[processing_pb2.ReturnLine(line_no=1, qty_milli=1)]),
        "ProcessBatch": processing_pb2.ProcessBatchRequest(operations=[
            processing_pb2.Operation(accrue=purchase(KNOWN, "mutant-batch", 10)),
            processing_pb2.Operation(redeem=spend(KNOWN, "mutant-batch-2", 10**6)),
        ]),
        "ProcessEvent": processing_pb2.ProcessEventRequest(
            request_id="mutant-event",
            event=processing_pb2.CustomerEvent(customer=customer, type="top_up", amount_minor=10_000,
                                               attributes={"source": "app"})),
        "CreateAccount": accounts_pb2.CreateAccountRequest(request_id="mutant-create", account_id="MUTANT-1"),
        "GetAccount": accounts_pb2.GetAccountRequest(customer=customer),
        "GetBalance": accounts_pb2.GetBalanceRequest(customer=customer),
        "ListTransactions": accounts_pb2.ListTransactionsRequest(customer=customer, page_size=3),
        "IssueCard": accounts_pb2.IssueCardRequest(request_id="mutant-card", account_id=KNOWN, card="C-MUTANT"),
        "BlockCard": accounts_pb2.BlockCardRequest(request_id="mutant-block", card="C-NONE"),
        "SetAttributes": accounts_pb2.SetAttributesRequest(request_id="mutant-attrs", customer=customer,
                                                           segments=["vip"], birthday="02-29"),
        "Adjust": accounts_pb2.AdjustRequest(request_id="mutant-adjust", customer=customer, points=-(10**6),
                                             reason="test", operator_id="op-1"),
        "JoinGroup": accounts_pb2.JoinGroupRequest(request_id="mutant-join", account_id=KNOWN,
                                                   parent_account_id="NONE"),
        "LeaveGroup": accounts_pb2.LeaveGroupRequest(request_id="mutant-leave", account_id=KNOWN),
    }
    found = {}
    for method in UNARY:
        example = examples.get(method.name)
        found[path(method)] = [example.SerializeToString()] if example is not None else [b""]
    return found


VALID = valid_examples()
INPUT_TYPES = {path(method): method.input_type for method in UNARY}


def scalar_paths(descriptor, depth: int = 0) -> list[tuple]:
    """Every scalar field reachable from `descriptor`, as a path of field descriptors."""
    found = []
    for field in descriptor.fields:
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            continue  # a map's entries are not set by path (CustomerEvent.attributes)
        if field.type == F.TYPE_MESSAGE:
            if depth < DEPTH_MAX:
                found.extend((field, *rest) for rest in scalar_paths(field.message_type, depth + 1))
        else:
            found.append((field,))
    return found


EDGES = {  # the values where integer conversions break, per wire type
    F.TYPE_INT64: [-(2**63), -1, 2**31, 2**63 - 1], F.TYPE_UINT64: [0, 2**63 - 1, 2**63, 2**64 - 1],
    F.TYPE_INT32: [-(2**31), -1, 2**31 - 1], F.TYPE_UINT32: [0, 2**31 - 1, 2**31, 2**32 - 1],
}


def hostile_value(field):
    edges = EDGES.get(field.type)
    if edges is None:
        return field_value(field, DEPTH_MAX)
    return st.one_of(st.sampled_from(edges), field_value(field, DEPTH_MAX))


@st.composite
def with_hostile_fields(draw, descriptor, original: bytes):
    """A well-formed request with one to three of its scalar fields (set or not, at any depth)
    given a hostile value: it passes most checks, so the value travels into the ledger."""
    message = message_factory.GetMessageClass(descriptor)()
    message.ParseFromString(original)
    for field_path in draw(st.lists(st.sampled_from(scalar_paths(descriptor)), min_size=1, max_size=2)):
        set_path(message, field_path, draw(hostile_value(field_path[-1])), add=draw(st.integers(0, 3)) == 0)
    return message


def set_path(message, field_path: tuple, value, add: bool = False) -> None:
    """Set the scalar at `field_path` (in the first element of a repeated message, or a new one
    when `add` or there is none; appended to a repeated scalar)."""
    node = message
    for field in field_path[:-1]:
        if field.is_repeated:
            items = getattr(node, field.name)
            node = items.add() if add or not items else items[0]
        else:
            node = getattr(node, field.name)
    leaf = field_path[-1]
    if leaf.is_repeated:
        getattr(node, leaf.name).append(value)
    else:
        setattr(node, leaf.name, value)


@st.composite
def mutated(draw, original: bytes):
    """A valid message with a few random edits: flipped, inserted, deleted bytes, truncation."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if edit == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and data:
            data[position] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x08]))
        elif edit == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete" and data:
            del data[position:position + draw(st.integers(1, 4))]
        elif edit == "truncate":
            del data[position:]
    return bytes(data)


# -- the server and the checks ------------------------------------------------------------------


class Target:
    def __init__(self, server: KassaServer):
        self.server = server
        self.channel = grpc.insecure_channel(server.address)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.raw = {
            path(method): self.channel.unary_unary(
                path(method), request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            for method in UNARY
        }
        self.stream = self.channel.stream_stream(
            STREAM_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )

    def state(self):
        stats = self.admin.GetStats(admin_pb2.GetStatsRequest(), timeout=CALL_TIMEOUT_S)
        return stats.accounts, stats.transactions, snapshot(self.server, KNOWN)

    def send(self, method: str, payload: bytes) -> None:
        """Send raw bytes; check the answer's code and that a refusal changed nothing."""
        before = self.state()
        try:
            reply = self.raw[method](payload, timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        assert code in DOCUMENTED, f"{method} answered {code.name}: {details} (payload {payload[:200]!r})"
        if code == grpc.StatusCode.OK and method == BATCH_METHOD:
            for index, result in enumerate(processing_pb2.ProcessBatchResponse.FromString(reply).results):
                assert result.code in DOCUMENTED_ITEM_CODES, (
                    f"{method} answered operations[{index}] {common_pb2.Code.Name(result.code)}: {result.message} "
                    f"(payload {payload[:200]!r})"
                )
        if code != grpc.StatusCode.OK:
            assert self.state() == before, f"{method} refused {code.name} ({details}) but changed the ledger"


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    server = KassaServer(workdir, env={"KASSA_SERVER_MESSAGE_BYTES_MAX": str(MESSAGE_BYTES_MAX)}).start()
    try:
        open_account(server, KNOWN, card="C-HOSTILE")
        server.processing.Accrue(purchase(KNOWN, "fund", 500), timeout=CALL_TIMEOUT_S)
        target = Target(server)
        try:
            yield target
        finally:
            target.channel.close()
    finally:
        assert server.stop() == 0


def assert_still_serving(target: Target) -> None:
    assert target.server.process.poll() is None, "the server exited"
    assert health_status(target.server.address) == health_pb2.HealthCheckResponse.SERVING
    assert target.server.accounts.GetBalance(
        accounts_pb2.GetBalanceRequest(customer=by_account(KNOWN)), timeout=CALL_TIMEOUT_S
    ).balance.active_points >= 0
    assert_verifies(target.server)


SETTINGS = settings(
    deadline=None, database=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


class TestGeneratedMessages:
    @settings(SETTINGS, max_examples=400)
    @given(data=st.data())
    def test_generated_requests_to_every_rpc_get_documented_codes_and_refusals_change_nothing(self, target, data):
        method = data.draw(st.sampled_from(sorted(REQUESTS)), label="method")
        message = data.draw(REQUESTS[method], label="request")
        target.send(method, uniquify(message).SerializeToString())

    @pytest.mark.parametrize("method", sorted(REQUESTS), ids=lambda method: method.rsplit("/", 1)[-1])
    @settings(SETTINGS, max_examples=60)
    @given(data=st.data())
    def test_valid_requests_with_hostile_field_values_get_documented_codes(self, target, method, data):
        """Well-formed requests about a real account with a few hostile field values: past the
        first checks, into the ledger."""
        message = data.draw(with_hostile_fields(INPUT_TYPES[method], VALID[method][0]), label="request")
        target.send(method, uniquify(message).SerializeToString())

    def test_the_server_is_still_serving_and_the_ledger_verifies(self, target):
        assert_still_serving(target)


class TestIntegerEdges:
    @pytest.mark.parametrize("method", sorted(REQUESTS), ids=lambda method: method.rsplit("/", 1)[-1])
    def test_every_integer_field_at_each_edge_of_its_type_gets_a_documented_code(self, target, method):
        """Deterministic: a well-formed request with one integer field (at any depth) set to each
        edge of its wire type, where conversions to C or int64 values break."""
        wrong = []
        for field_path in scalar_paths(INPUT_TYPES[method]):
            for value in EDGES.get(field_path[-1].type, []):
                message = message_factory.GetMessageClass(INPUT_TYPES[method])()
                message.ParseFromString(VALID[method][0])
                set_path(message, field_path, value)
                try:
                    target.send(method, uniquify(message).SerializeToString())
                except AssertionError as error:
                    where = ".".join(field.name for field in field_path)
                    wrong.append(f"{where} = {value}: {str(error).splitlines()[0]}")
        assert not wrong, f"{len(wrong)} answers outside the documented codes:\n" + "\n".join(wrong)

    def test_the_server_is_still_serving_and_the_ledger_verifies(self, target):
        assert_still_serving(target)


class TestRawBytes:
    @settings(SETTINGS, max_examples=120)
    @given(method=st.sampled_from(sorted(REQUESTS)), payload=st.binary(max_size=300))
    def test_random_bytes_to_every_rpc_get_documented_codes(self, target, method, payload):
        target.send(method, payload)

    @settings(SETTINGS, max_examples=150)
    @given(data=st.data())
    def test_mutated_valid_requests_get_documented_codes_and_refusals_change_nothing(self, target, data):
        method = data.draw(st.sampled_from(sorted(VALID)), label="method")
        original = data.draw(st.sampled_from(VALID[method]))
        target.send(method, data.draw(mutated(original), label="payload"))

    def test_the_server_is_still_serving_and_the_ledger_verifies(self, target):
        assert_still_serving(target)


def event_batches():
    return messages(processing_pb2.EventBatch.DESCRIPTOR)


def run_stream(target: Target, payloads: list[bytes], timeout_s: float = STREAM_TIMEOUT_S):
    """(code, details, [AckBatch]) of one StreamEvents call carrying `payloads`."""
    replies = []
    try:
        for reply in target.stream(iter(payloads), timeout=timeout_s):
            replies.append(processing_pb2.AckBatch.FromString(reply))
        return grpc.StatusCode.OK, "", replies
    except grpc.RpcError as error:
        return error.code(), error.details(), replies


class TestStreamEvents:
    @settings(SETTINGS, max_examples=40)
    @given(batches=st.lists(event_batches(), min_size=1, max_size=3))
    def test_generated_event_batches_are_acked_per_event_or_refused_with_a_documented_code(self, target, batches):
        before = target.state()
        code, details, replies = run_stream(target, [uniquify(batch).SerializeToString() for batch in batches])

        assert code in DOCUMENTED, f"StreamEvents ended {code.name}: {details}"
        if code == grpc.StatusCode.OK:
            assert [len(reply.acks) for reply in replies] == [len(batch.events) for batch in batches]
            for reply, batch in zip(replies, batches):
                for ack, event in zip(reply.acks, batch.events):
                    assert ack.event_id == event.event_id
                    assert ack.code in DOCUMENTED_ITEM_CODES, ack
            if all(ack.code != common_pb2.CODE_OK for reply in replies for ack in reply.acks):
                assert target.state() == before, "a stream whose every event was refused changed the ledger"

    def test_a_stream_carrying_bytes_that_are_not_an_event_batch_ends_with_invalid_argument(self, target):
        good = processing_pb2.EventBatch(events=[
            processing_pb2.Event(event_id="stream-ok-1", purchase=purchase(KNOWN, "", 1)),
        ]).SerializeToString()
        answers = []
        for garbage in (b"\x0a\x03\x0a\x01\xff", b"\xff\xff\xff"):  # bad UTF-8; a varint past 10 bytes
            code, details, _ = run_stream(target, [good, garbage], timeout_s=GARBAGE_STREAM_TIMEOUT_S)
            answers.append((garbage, code, details))
        wrong = [answer for answer in answers if answer[1] != grpc.StatusCode.INVALID_ARGUMENT]
        assert not wrong, "StreamEvents carrying undecodable bytes must end INVALID_ARGUMENT; got " + "; ".join(
            f"{garbage!r}: {code.name} {details}"
            + (" (the stream hung until the client's deadline)" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "")
            for garbage, code, details in wrong
        )

    def test_the_server_is_still_serving_and_the_ledger_verifies(self, target):
        assert_still_serving(target)


class TestOversizedMessages:
    @pytest.mark.parametrize("method", sorted(REQUESTS))
    def test_a_request_over_message_bytes_max_is_resource_exhausted(self, target, method):
        big = b"x" * (MESSAGE_BYTES_MAX + 1024)
        payload = b"\x0a" + _varint(len(big)) + big  # field 1, length-delimited
        before = target.state()
        with pytest.raises(grpc.RpcError) as caught:
            target.raw[method](payload, timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        assert target.state() == before

    def test_a_stream_message_over_message_bytes_max_is_resource_exhausted(self, target):
        batch = processing_pb2.EventBatch(events=[
            processing_pb2.Event(event_id=f"big-{n}", purchase=purchase(KNOWN, "", 1)) for n in range(2_000)
        ]).SerializeToString()
        assert len(batch) > MESSAGE_BYTES_MAX
        before = target.state()
        code, details, _ = run_stream(target, [batch])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{code.name}: {details}"
        assert target.state() == before

    def test_the_server_is_still_serving_and_the_ledger_verifies(self, target):
        assert_still_serving(target)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_strategies_cover_every_rpc_of_processing_and_accounts():
    names = {method.name for method in UNARY}
    assert {"Calculate", "Accrue", "Redeem", "Rollback", "ProcessBatch", "ProcessEvent", "CreateAccount",
            "GetBalance", "ListTransactions", "Adjust"} <= names
    assert set(VALID) == set(REQUESTS)
