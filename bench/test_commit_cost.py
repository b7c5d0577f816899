"""What one durable LMDB commit of N purchases costs inside the core, for N in 1..2000.
Run: `python -m pytest bench/test_commit_cost.py`. Per-purchase cost = mean / N."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from kassa.core_ext import Ledger, Program, load_program
from kassa.core_ext.model import AccrueOp, CreateAccountOp, Customer, IdKind, Line, Receipt

REPO = Path(__file__).resolve().parent.parent
NOW_MS = 1_780_300_800_000
ACCOUNTS = 10_000
ROUNDS = 5  # timed commits per batch size
_sequence = itertools.count()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    ledger = Ledger(str(tmp_path_factory.mktemp("ledger")), Program(load_program([REPO / "config/rules"])),
                    4 * 1024**3, 900, sync=True)
    ledger.apply([CreateAccountOp(f"seed-{i}", b"s", f"B{i}") for i in range(ACCOUNTS)], NOW_MS)
    yield ledger
    ledger.close()


def purchases(count: int, rng: random.Random) -> list:
    ops = []
    for _ in range(count):
        n = next(_sequence)
        lines = tuple(
            Line(i + 1, f"SKU-{rng.randint(1, 500)}", rng.choice(("grocery/dairy", "pharmacy", "home")), 1000, price, price)
            for i, price in enumerate(rng.randint(100, 20_000) for _ in range(rng.randint(1, 10)))
        )
        ops.append(AccrueOp(f"p-{n}", b"d", Customer(IdKind.ACCOUNT, f"B{rng.randrange(ACCOUNTS)}"),
                            Receipt("s", "t", str(n), lines)))
    return ops


@pytest.mark.parametrize("batch_size", [1, 10, 100, 1000, 2000])
@pytest.mark.benchmark(group="durable-commit-by-batch-size")
def test_commit(benchmark, ledger, batch_size):
    rng = random.Random(batch_size)
    outcomes = benchmark.pedantic(
        ledger.apply, setup=lambda: ((purchases(batch_size, rng), NOW_MS), {}), rounds=ROUNDS, iterations=1
    )
    assert all(outcome.code == 0 for outcome in outcomes)
    benchmark.extra_info["purchases_per_commit"] = batch_size
    benchmark.extra_info["us_per_purchase"] = round(benchmark.stats.stats.mean / batch_size * 1e6, 2)
