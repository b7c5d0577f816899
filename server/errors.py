"""Refusals in the gRPC richer error model (google.rpc.Status, AIP-193), built in one place.

Every refusal carries, in the `grpc-status-details-bin` trailer, a `google.rpc.Status` with an
`ErrorInfo` (a stable `reason` in the `kassa.v1` domain), a `BadRequest` naming the field for
INVALID_ARGUMENT, and a `RetryInfo` where the same call can succeed a little later. The business
reason also travels in the `kassa-reason` trailer, as it did before the details existed.
"""

from __future__ import annotations

import math
import re
from typing import NoReturn

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "kassa.v1"  # ErrorInfo.domain of every refusal kassa makes
REASON_METADATA_KEY = "kassa-reason"  # trailing metadata naming the business reason of a refusal

IN_FLIGHT_RETRY_DELAY_MS = 100  # ABORTED: the same request_id is being committed; about one group commit
STREAMS_RETRY_DELAY_MS = 1_000  # RESOURCE_EXHAUSTED at processing.streams_max: a stream must end first
SHUTTING_DOWN_RETRY_DELAY_MS = 1_000  # UNAVAILABLE while a worker drains: another worker, or the restarted one, takes it

# ErrorInfo.reason of a refusal without a kassa.v1.Reason: one stable name per situation.
INVALID_FIELD = "INVALID_FIELD"  # a field of the request is wrong; BadRequest names it
MALFORMED_REQUEST = "MALFORMED_REQUEST"  # the request bytes are not the method's message
BATCH_TOO_LARGE = "BATCH_TOO_LARGE"  # more operations than processing.batch_operations_max
RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"  # the answer would pass server.message_bytes_max
RULESET_REFUSED = "RULESET_REFUSED"  # ReloadRules: the program does not validate
API_KEY_MISSING = "API_KEY_MISSING"  # no x-api-key metadata
API_KEY_INVALID = "API_KEY_INVALID"  # an x-api-key no configured key matches
ADMIN_KEY_REQUIRED = "ADMIN_KEY_REQUIRED"  # an Admin RPC or Accounts.Adjust with a non-admin key
STORE_NOT_ALLOWED = "STORE_NOT_ALLOWED"  # the key is scoped to other stores
RATE_LIMITED = "RATE_LIMITED"  # the key's token bucket is empty
STREAMS_EXHAUSTED = "STREAMS_EXHAUSTED"  # processing.streams_max event streams are open
REQUEST_IN_FLIGHT = "REQUEST_IN_FLIGHT"  # the same request_id is being committed for another call
REQUEST_ID_REUSED = "REQUEST_ID_REUSED"  # the request_id was used before with a different payload
EXPIRY_SWEEP_FAILED = "EXPIRY_SWEEP_FAILED"  # Admin.ExpirePoints could not finish
SHUTTING_DOWN = "SHUTTING_DOWN"  # the worker drains after SIGTERM: nothing of the call was recorded
NO_PARTITION_OWNER = "NO_PARTITION_OWNER"  # a cluster node knows no owner it can forward the call to

# The reason of a ledger outcome that names no business reason, by its code.
REASON_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: INVALID_FIELD,
    grpc.StatusCode.NOT_FOUND: "NOT_FOUND",
    grpc.StatusCode.ALREADY_EXISTS: "ALREADY_EXISTS",
    grpc.StatusCode.PERMISSION_DENIED: STORE_NOT_ALLOWED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: "LEDGER_EXHAUSTED",  # map, disk or reader slots; the message says which
    grpc.StatusCode.FAILED_PRECONDITION: "FAILED_PRECONDITION",
    grpc.StatusCode.ABORTED: REQUEST_IN_FLIGHT,
    grpc.StatusCode.INTERNAL: "INTERNAL",
    grpc.StatusCode.UNAVAILABLE: SHUTTING_DOWN,  # the committer answers it only while draining
}
RETRY_DELAY_MS_OF_REASON = {
    REQUEST_IN_FLIGHT: IN_FLIGHT_RETRY_DELAY_MS,
    STREAMS_EXHAUSTED: STREAMS_RETRY_DELAY_MS,
    SHUTTING_DOWN: SHUTTING_DOWN_RETRY_DELAY_MS,
}

# "receipt.lines[0].amount_minor: must be >= 0": a field path, then what is wrong with it.
_FIELD_PATH = re.compile(r"([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): (.*)", re.DOTALL)


def field_violation(message: str) -> tuple[str, str] | None:
    """(field path, description) of a message that starts with its field, as kassa's do."""
    found = _FIELD_PATH.fullmatch(message)
    return (found[1], found[2]) if found else None


def refusal_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    violations: list[tuple[str, str]] | None = None,
    retry_delay_ms: int | None = None,
    business: bool = False,
) -> grpc.Status:
    """The status of a refusal, for `context.abort_with_status`. `violations` (field, description)
    default to the field at the start of an INVALID_ARGUMENT message; `retry_delay_ms` defaults to
    the reason's, if retrying it helps. A `business` reason also goes in the kassa-reason trailer."""
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)]
    if violations is None and code == grpc.StatusCode.INVALID_ARGUMENT:
        found = field_violation(message)
        violations = [found] if found else []
    if violations:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]))
    if retry_delay_ms is None:
        retry_delay_ms = RETRY_DELAY_MS_OF_REASON.get(reason)
    if retry_delay_ms is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(retry_delay_ms)
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    rich = rpc_status.to_status(status)
    if not business:
        return rich
    # abort_with_status sends the status's trailing metadata: ours goes beside the details.
    return rich._replace(trailing_metadata=((REASON_METADATA_KEY, reason), *rich.trailing_metadata))


async def refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, reason: str,
                 **options) -> NoReturn:
    """End the call with a refusal (see `refusal_status` for the options)."""
    await context.abort_with_status(refusal_status(code, message, reason, **options))


def retry_delay_ms(delay_s: float) -> int:
    """A delay in seconds as whole milliseconds, rounded up: a client that waits it is not early."""
    return max(1, math.ceil(delay_s * 1000))
