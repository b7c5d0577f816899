"""The protobuf encoders of the hot responses (Accrue, Calculate). The server writes these responses
with its C writer (server/wire.pyx); these are what test_wire.py compares its bytes against."""

from __future__ import annotations

from kassa.core_ext import model as m
from kassa.server.convert import _set_time, fill_balance
from kassa.v1 import common_pb2, processing_pb2


def fill_calculation(target: common_pb2.Calculation, value: m.Calculation) -> None:
    add_line = target.lines.add
    for line in value.lines:
        add_line(
            line_no=line.line_no,
            amount_minor=line.amount_minor,
            discount_minor=line.discount_minor,
            earned_points=line.earned_points,
            redeemed_points=line.redeemed_points,
            captured_points=line.captured_points,
            due_minor=line.due_minor,
        )
    add_campaign = target.campaigns.add
    for c in value.campaigns:
        add_campaign(campaign_id=c.campaign_id, effect=c.effect, points=c.points, discount_minor=c.discount_minor)
    target.total_minor = value.total_minor
    target.discount_minor = value.discount_minor
    target.payable_minor = value.payable_minor
    target.earned_points = value.earned_points
    target.redeemable_points = value.redeemable_points
    target.redeemed_points = value.redeemed_points
    target.captured_points = value.captured_points
    target.due_minor = value.due_minor
    target.ruleset_version = value.ruleset_version
    _set_time(target.points_activate_at, value.activate_at_ms)
    _set_time(target.points_expire_at, value.expire_at_ms)
    if value.promo_codes:
        add_code = target.promo_codes.add
        for code in value.promo_codes:
            add_code(code=code.code, accepted=code.accepted, reason=code.reason)
    for activate_at_ms, expire_at_ms, points in value.lots:
        lot = target.own_lots.add(points=points)
        _set_time(lot.activate_at, activate_at_ms)
        _set_time(lot.expire_at, expire_at_ms)
    if value.no_points_reason:
        target.no_points_reason = value.no_points_reason
    if value.explain:
        add_explanation = target.explain.add
        for explanation in value.explain:
            add_explanation(campaign_id=explanation.campaign_id, applied=explanation.applied, reason=explanation.reason)


def calculate_response(value: m.CalculateResult) -> processing_pb2.CalculateResponse:
    response = processing_pb2.CalculateResponse(account_id=value.account_id)
    fill_calculation(response.calculation, value.calculation)
    fill_balance(response.balance, value.balance)
    return response


def fill_accrue_response(target: processing_pb2.AccrueResponse, value: m.AccrueResult):
    target.transaction_id = value.transaction_id
    target.account_id = value.account_id
    target.captured_points = value.captured_points
    fill_calculation(target.calculation, value.calculation)
    fill_balance(target.balance, value.balance)
    return target


def accrue_response(value: m.AccrueResult) -> processing_pb2.AccrueResponse:
    return fill_accrue_response(processing_pb2.AccrueResponse(), value)
