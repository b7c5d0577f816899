"""server/errors.py: the field path read from a refusal's message, and the details a status carries."""

from __future__ import annotations

import re

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from kassa.server import errors

AIP_193_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,61}[A-Z0-9]")  # ErrorInfo.reason: UPPER_SNAKE_CASE, <= 63 chars
FIELD_MESSAGES = [  # (message, (field, description) or None)
    ("receipt.lines[0].amount_minor: must be >= 0, got -500", ("receipt.lines[0].amount_minor", "must be >= 0, got -500")),
    ("request_id: must not be empty", ("request_id", "must not be empty")),
    ("codes[3]: 'X' given twice", ("codes[3]", "'X' given twice")),
    ("operations[2].accrue.receipt.store_id: longer than 64 bytes",
     ("operations[2].accrue.receipt.store_id", "longer than 64 bytes")),
    ("insufficient points: available 5, asked 9", None),  # words, not a field path
    ("ruleset refused, the old one keeps serving:\na: b", None),
]


def details_of(status: grpc.Status) -> dict:
    """Detail type -> message, from the status's grpc-status-details-bin trailer."""
    (binary,) = [value for key, value in status.trailing_metadata if key == "grpc-status-details-bin"]
    found = {}
    for detail in status_pb2.Status.FromString(binary).details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                found[kind] = kind()
                detail.Unpack(found[kind])
    return found


class TestFieldViolation:
    @pytest.mark.parametrize("message, expected", FIELD_MESSAGES)
    def test_the_field_path_at_the_start_of_a_message(self, message, expected):
        assert errors.field_violation(message) == expected


class TestRefusalStatus:
    def test_invalid_argument_carries_the_field_of_its_message(self):
        status = errors.refusal_status(grpc.StatusCode.INVALID_ARGUMENT, "points: must be >= 0, got -5",
                                       errors.INVALID_FIELD)
        found = details_of(status)
        (violation,) = found[error_details_pb2.BadRequest].field_violations
        assert (violation.field, violation.description) == ("points", "must be >= 0, got -5")
        assert found[error_details_pb2.ErrorInfo].domain == "kassa.v1"
        assert error_details_pb2.RetryInfo not in found

    def test_in_flight_tells_when_to_retry(self):
        status = errors.refusal_status(grpc.StatusCode.ABORTED, "request_id 'x' is in flight", errors.REQUEST_IN_FLIGHT)
        retry = details_of(status)[error_details_pb2.RetryInfo]
        assert retry.retry_delay.ToMilliseconds() == errors.IN_FLIGHT_RETRY_DELAY_MS

    def test_a_business_reason_also_goes_in_the_kassa_reason_trailer(self):
        status = errors.refusal_status(grpc.StatusCode.FAILED_PRECONDITION, "insufficient points",
                                       "INSUFFICIENT_POINTS", business=True)
        assert dict(status.trailing_metadata)["kassa-reason"] == "INSUFFICIENT_POINTS"
        assert details_of(status)[error_details_pb2.ErrorInfo].reason == "INSUFFICIENT_POINTS"

    @pytest.mark.parametrize("delay_s, delay_ms", [(0.0, 1), (0.0004, 1), (0.25, 250), (0.2501, 251)])
    def test_a_retry_delay_is_rounded_up_to_a_whole_millisecond(self, delay_s, delay_ms):
        assert errors.retry_delay_ms(delay_s) == delay_ms


class TestReasonNames:
    def test_every_reason_is_an_aip_193_name(self):
        from kassa.core_ext.model import Reason

        names = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}
        names -= {errors.DOMAIN, errors.REASON_METADATA_KEY}
        names |= set(errors.REASON_OF_CODE.values()) | {reason.name for reason in Reason if reason}
        bad = [name for name in names if not AIP_193_REASON.fullmatch(name)]
        assert names
        assert bad == []
