"""Rule evaluation inside the core: a 5-line receipt against a 50-campaign program, beside the
pure-Python reference evaluator on the same input. Run: `python -m pytest bench/test_core_rules.py`."""

from __future__ import annotations

import pytest

from kassa.core_ext import Program
from kassa.core_ext.model import Line, Receipt
from tests.core import reference
from tests.core.programs import generated_program

NOW_MS = 1_780_300_800_000
SPEC = generated_program(50)
PROGRAM = Program(SPEC)
RECEIPT = Receipt(
    "store-1",
    "t1",
    "r1",
    (
        Line(1, "SKU-3", "grocery/dairy/milk", 2000, 8_990, 17_980),
        Line(2, "SKU-7", "pharmacy/vitamins", 1000, 45_000, 45_000),
        Line(3, "SKU-11", "flowers/roses", 7000, 12_000, 84_000),
        Line(4, "SKU-19", "home/kitchen", 1500, 3_333, 4_999),
        Line(5, "SKU-2", "tobacco", 1000, 25_000, 25_000, True, True),
    ),
)


@pytest.fixture(scope="module")
def agreed():
    """What was timed is right: the core and the reference give the same answer on this input."""
    core = reference.core_as_dict(PROGRAM.calculate(RECEIPT, NOW_MS, 100_000, 0))
    assert core == reference.calculate(SPEC, RECEIPT, NOW_MS, 100_000, 0)
    return core


@pytest.mark.benchmark(group="calculate-5-lines-50-campaigns")
def test_core(benchmark, agreed):
    result = benchmark(PROGRAM.calculate, RECEIPT, NOW_MS, 100_000, 0)
    benchmark.extra_info["earned_points"] = result.earned_points
    benchmark.extra_info["campaigns_applied"] = len(result.campaigns)
    assert reference.core_as_dict(result) == agreed


@pytest.mark.benchmark(group="calculate-5-lines-50-campaigns")
def test_reference(benchmark, agreed):
    result = benchmark(reference.calculate, SPEC, RECEIPT, NOW_MS, 100_000, 0)
    benchmark.extra_info["earned_points"] = result["earned_points"]
    assert result == agreed
