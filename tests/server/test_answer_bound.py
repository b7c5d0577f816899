"""server/answer_bound.py: the most bytes an operation's result in a ProcessBatch answer can take.

ProcessBatch refuses, before committing anything, a batch whose answer could exceed
`server.message_bytes_max` (tests/server/test_batch.py::TestAnswerSize). That is only safe if the
bound is never below what is written: checked here on the answers of a real server and on results
with every value at its largest.
"""

from __future__ import annotations

from kassa.core_ext import limits, load_program, promo
from kassa.core_ext.model import (
    AccrueResult, AppliedCampaign, Balance, Calculation, Code, LineResult, Outcome, PromoCodeResult, RedeemResult,
    RollbackResult,
)
from kassa.v1 import processing_pb2
from kassa.server import convert, wire
from kassa.server.answer_bound import BatchAnswerBound
from kassa.server.servicers.processing import _BUILDERS, other_result
from tests.kassa_harness import REPO
from tests.server.helpers import by_account, earn, line, open_account, receipt

Op = processing_pb2.Operation
INT64_MAX = 2**63 - 1
LINES_MAX = limits.LINES_PER_RECEIPT_MAX


def sample_program():
    """The ProgramSpec of the sample program the `kassa` fixture serves."""
    return load_program([REPO / "config" / "rules"])


def written_bytes(outcome: Outcome) -> int:
    """The bytes one result takes in a ProcessBatchResponse, as the server writes it."""
    return len(wire.batch_response([outcome], other_result))


def spend(request_id: str, points: int, account_id: str = "A-1", **fields) -> Op:
    return Op(redeem=processing_pb2.RedeemRequest(
        request_id=request_id, customer=by_account(account_id), points=points, receipt_total_minor=10**9,
        mode=fields.pop("mode", processing_pb2.REDEEM_MODE_IMMEDIATE), **fields))


def buy(request_id: str, the_receipt, account_id: str = "A-1") -> Op:
    return Op(accrue=processing_pb2.AccrueRequest(
        request_id=request_id, customer=by_account(account_id), receipt=the_receipt))


def cancel(request_id: str, original_request_id: str) -> Op:
    return Op(rollback=processing_pb2.RollbackRequest(request_id=request_id, original_request_id=original_request_id))


def checked(operation: Op):
    """The operation ProcessBatch commits for `operation`; None when it refuses it as invalid."""
    kind = operation.WhichOneof("op")
    try:
        return _BUILDERS[kind](getattr(operation, kind))
    except convert.InvalidArgument:
        return None


class TestRealAnswers:
    def test_no_result_of_a_real_server_is_larger_than_its_bound(self, kassa):
        open_account(kassa, "A-1")
        earn(kassa, "A-1", 5_000, request_id="seed")
        categories = ["grocery/dairy", "grocery/snacks", "household/soap", "pharmacy/x", "flowers/roses", "drinks/wine"]
        many = receipt(*[line(n + 1, 90_000 + n, qty_milli=3_000, category=categories[n % 6], sku="COFFEE-1KG")
                         for n in range(200)], receipt_no="R-" + "9" * 60, store_id="s" * 64)
        many.card_bin = "220070"
        many.promo_codes.extend(f"NO-SUCH-CODE-{n:02d}-" + "X" * 40 for n in range(16))
        operations = [
            buy("big", many),
            buy("small", receipt(line(1, 2_000))),
            spend("spend", 100),
            spend("hold", 100, mode=processing_pb2.REDEEM_MODE_HOLD, store_id="s" * 64, terminal_id="t" * 64),
            cancel("cancel", "small"),
            cancel("pending", "not-yet"),
            spend("é" * (limits.REQUEST_ID_BYTES_MAX // 2), 10**9),  # refused naming its request id
            buy("seed", receipt(line(1, 1))),  # a used request id with another payload
            buy("bad", receipt(line(1, 1_000, qty_milli=0))),
            spend("nobody", 1, account_id="N" * 64),
        ]

        results = kassa.processing.ProcessBatch(processing_pb2.ProcessBatchRequest(operations=operations)).results

        bound = BatchAnswerBound(sample_program())
        assert len(results[0].accrue.calculation.campaigns) >= 4  # what the bound must count is there
        assert len(results[0].accrue.calculation.promo_codes) == 16
        assert results[5].rollback.kind == processing_pb2.ROLLBACK_KIND_PENDING_ORIGINAL
        for operation, result in zip(operations, results, strict=True):
            op = checked(operation)
            written = len(processing_pb2.ProcessBatchResponse(results=[result]).SerializeToString())
            most = bound.error_bytes if op is None else bound.operation_bytes(op)
            assert written <= most, (operation.WhichOneof("op"), result.code, written, most)


class TestLargestValues:
    def test_an_accrue_of_the_most_lines_codes_and_campaigns_at_their_largest_fits(self):
        spec = sample_program()
        bound = BatchAnswerBound(spec)
        codes = tuple(f"{n:02d}".ljust(promo.PROMO_CODE_BYTES_MAX, "C")
                      for n in range(convert.PROMO_CODES_PER_RECEIPT_MAX))
        purchase = [c for c in spec.campaigns if c.trigger == "purchase"]
        calculation = Calculation(
            tuple(LineResult(2**32 - 1, INT64_MAX, INT64_MAX, -1, -1) for _ in range(LINES_MAX)),
            -1, -1, -1, -1, -1, -1,
            tuple(AppliedCampaign(c.id, c.effect.kind, -1, -1) for c in purchase),
            spec.version, INT64_MAX, INT64_MAX,
            tuple(PromoCodeResult(code, False, "limit_per_account") for code in codes),
            (), (),
            tuple((INT64_MAX, INT64_MAX, -1) for c in purchase if c.effect.points_lifetime_days is not None
                  or c.effect.activation_delay_days is not None),
        )
        balance = Balance(-1, -1, -1, -1, -1, INT64_MAX, -1)
        result = Outcome(Code.OK, body=AccrueResult(-1, "A" * limits.IDENTIFIER_BYTES_MAX, calculation, balance, -1))
        bought = receipt(*[line(n + 1, 100) for n in range(LINES_MAX)])
        bought.promo_codes.extend(codes)
        op = convert.accrue_op(processing_pb2.AccrueRequest(request_id="r", customer=by_account("A-1"), receipt=bought))

        assert written_bytes(result) <= bound.operation_bytes(op)

    def test_a_redeem_and_a_rollback_at_their_largest_fit(self):
        bound = BatchAnswerBound(sample_program())
        balance = Balance(-1, -1, -1, -1, -1, INT64_MAX, -1)
        account_id = "A" * limits.IDENTIFIER_BYTES_MAX
        redeemed = Outcome(Code.OK, body=RedeemResult(2**64 - 1, account_id, -1, -1, INT64_MAX, balance))
        rolled_back = Outcome(Code.OK, body=RollbackResult(2**64 - 1, account_id, 4, 2**64 - 1, -1, -1, -1, balance))
        refused = Outcome(Code.FAILED_PRECONDITION, 2**31 - 1, "é" * 1_000)

        assert written_bytes(redeemed) <= bound.redeem_bytes
        assert written_bytes(rolled_back) <= bound.rollback_bytes
        assert written_bytes(refused) <= bound.error_bytes

    def test_a_long_message_is_cut_at_a_character(self):
        message = "ошибка " * 100  # 1,300 bytes of two-byte characters and spaces
        written = processing_pb2.ProcessBatchResponse.FromString(
            wire.batch_response([Outcome(Code.NOT_FOUND, message=message)], other_result))
        cut = written.results[0].message
        assert len(cut.encode()) <= wire.RESULT_MESSAGE_BYTES_MAX
        assert len(cut.encode()) >= wire.RESULT_MESSAGE_BYTES_MAX - 1
        assert message.startswith(cut)
