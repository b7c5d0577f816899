"""The most bytes a ProcessBatch answer can take, known before anything of the batch is committed.

A batch is answered after its commit, and the answer must fit `server.message_bytes_max`: one that
does not could never be sent, nor could its replay, and the caller would never learn what was
recorded. So ProcessBatch adds up these bounds, one per operation, and refuses a batch whose answer
could exceed the limit before it commits anything.

The bounds are read off the response messages' descriptors with every field at its largest (a
varint in 10 bytes, a string at its limit, a message's length in 5 bytes), so that a field added to
a response is counted without a change here. A string field this module gives no limit for stops
the server at its start (KeyError) rather than be counted as empty.

What depends on the ruleset (the campaigns an answer may list, the ruleset version) is taken from
the ruleset serving when the batch is checked. A replay of an operation committed under another
ruleset is answered as it was then, and may list more campaigns than these bounds count: such a
retry gets RESOURCE_EXHAUSTED and fits when sent in smaller batches (each operation replays alone).
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from kassa.core_ext import limits, promo
from kassa.core_ext.model import AccrueOp, RedeemOp, RollbackOp
from kassa.core_ext.rules import NO_POINTS_CARD_BLOCKED
from kassa.v1 import common_pb2, processing_pb2
from kassa.server import wire

VARINT_BYTES_MAX = 10  # a varint of 64 bits (a negative int64 takes all 10)
LENGTH_BYTES_MAX = 5  # the length of a nested message, any length below 2**35
PROMO_REASON_BYTES_MAX = 32  # a promo code's reason: one of a few words (limit_per_account, ...)

_FIXED_BYTES = {
    FieldDescriptor.TYPE_FIXED32: 4, FieldDescriptor.TYPE_SFIXED32: 4, FieldDescriptor.TYPE_FLOAT: 4,
    FieldDescriptor.TYPE_FIXED64: 8, FieldDescriptor.TYPE_SFIXED64: 8, FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_BOOL: 1,
}
_LENGTH_DELIMITED = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _tag_bytes(field) -> int:
    return _varint_bytes(field.number << 3)


def _value_bytes_max(field, texts: dict[str, int], counts: dict[str, int]) -> int:
    """One value of `field` at its largest, with its length prefix, without its tag."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return LENGTH_BYTES_MAX + message_bytes_max(field.message_type, texts, counts)
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        size = texts[field.full_name]
        return _varint_bytes(size) + size
    return _FIXED_BYTES.get(field.type, VARINT_BYTES_MAX)


def field_bytes_max(field, texts: dict[str, int], counts: dict[str, int]) -> int:
    """`field` at its largest, tags included; a repeated field holds counts[its full name] values."""
    count = counts.get(field.full_name, 0) if field.is_repeated else 1
    if not count:
        return 0
    return count * (_tag_bytes(field) + _value_bytes_max(field, texts, counts))


def message_bytes_max(descriptor, texts: dict[str, int], counts: dict[str, int] | None = None) -> int:
    """A message at its largest: every field at its largest, one field of each oneof (the largest).
    Repeated fields hold `counts[full name]` elements (none when not given)."""
    counts = counts or {}
    total = 0
    oneofs: dict[str, int] = {}
    for field in descriptor.fields:
        size = field_bytes_max(field, texts, counts)
        group = field.containing_oneof
        if group is None:
            total += size
        else:
            oneofs[group.full_name] = max(oneofs.get(group.full_name, 0), size)
    return total + sum(oneofs.values())


def element_bytes_max(field, texts: dict[str, int]) -> int:
    """One element of the repeated message field `field`, its tag and length included."""
    return _tag_bytes(field) + _value_bytes_max(field, texts, {})


def _own_lots(campaign) -> bool:
    return campaign.effect.points_lifetime_days is not None or campaign.effect.activation_delay_days is not None


def _campaigns_bytes(campaigns) -> int:
    """`campaigns` listed in a Calculation, each once, and the lots of their own they may give."""
    listed = common_pb2.Calculation.DESCRIPTOR.fields_by_name["campaigns"]
    lots = common_pb2.Calculation.DESCRIPTOR.fields_by_name["own_lots"]
    size = 0
    for campaign in campaigns:
        size += element_bytes_max(listed, {
            "kassa.v1.AppliedCampaign.campaign_id": len(campaign.id.encode()),
            "kassa.v1.AppliedCampaign.effect": len(campaign.effect.kind.encode()),
        })
        if _own_lots(campaign):  # lots are grouped by their dates: at most one per such campaign
            size += element_bytes_max(lots, {})
    return size


class BatchAnswerBound:
    """The bounds under one ruleset (`spec`: its ProgramSpec)."""

    def __init__(self, spec):
        self.ruleset_version = spec.version
        id_bytes_max = limits.IDENTIFIER_BYTES_MAX
        texts = {
            "kassa.v1.OperationResult.message": wire.RESULT_MESSAGE_BYTES_MAX,  # longer ones are cut
            "kassa.v1.AccrueResponse.account_id": id_bytes_max,
            "kassa.v1.RedeemResponse.account_id": id_bytes_max,
            "kassa.v1.RollbackResponse.account_id": id_bytes_max,
            "kassa.v1.Calculation.ruleset_version": len(spec.version.encode()),
            "kassa.v1.Calculation.no_points_reason": len(NO_POINTS_CARD_BLOCKED),  # the only reason there is
            "kassa.v1.PromoCodeResult.code": promo.PROMO_CODE_BYTES_MAX,
            "kassa.v1.PromoCodeResult.reason": PROMO_REASON_BYTES_MAX,
        }
        result = processing_pb2.OperationResult.DESCRIPTOR.fields_by_name
        calculation = common_pb2.Calculation.DESCRIPTOR.fields_by_name
        results_field = processing_pb2.ProcessBatchResponse.DESCRIPTOR.fields_by_name["results"]
        head = _tag_bytes(results_field) + LENGTH_BYTES_MAX + sum(
            field_bytes_max(result[name], texts, {}) for name in ("code", "reason"))
        self.error_bytes = head + field_bytes_max(result["message"], texts, {})

        def answered(kind: str, response) -> int:
            return max(self.error_bytes, head + _tag_bytes(result[kind]) + LENGTH_BYTES_MAX
                       + message_bytes_max(response.DESCRIPTOR, texts))

        self.redeem_bytes = answered("redeem", processing_pb2.RedeemResponse)
        self.rollback_bytes = answered("rollback", processing_pb2.RollbackResponse)
        # An accrue: what every answer holds, then what grows with the receipt and the ruleset. A
        # purchase lists each purchase campaign once at most, and one that needs a promo code only
        # when the receipt presents codes.
        purchase = [campaign for campaign in spec.campaigns if campaign.trigger == "purchase"]
        coded = [campaign for campaign in purchase if campaign.promo_code]
        uncoded = [campaign for campaign in purchase if not campaign.promo_code]
        self.accrue_bytes = answered("accrue", processing_pb2.AccrueResponse) + _campaigns_bytes(uncoded)
        self.coded_campaigns_bytes = _campaigns_bytes(coded)
        self.line_bytes = element_bytes_max(calculation["lines"], texts)
        self.promo_code_bytes = element_bytes_max(calculation["promo_codes"], texts)

    def operation_bytes(self, op) -> int:
        """The most bytes the OperationResult of `op` (a checked operation) can take."""
        kind = type(op)
        if kind is AccrueOp:
            receipt = op.receipt
            size = self.accrue_bytes + len(receipt.lines) * self.line_bytes
            if receipt.promo_codes:
                size += len(receipt.promo_codes) * self.promo_code_bytes + self.coded_campaigns_bytes
            return size
        if kind is RedeemOp:
            return self.redeem_bytes
        if kind is RollbackOp:
            return self.rollback_bytes
        raise TypeError(f"no OperationResult for {kind.__name__}")
