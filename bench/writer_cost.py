"""What a purchase costs inside LMDB's writer lock, and so how many one ledger can commit.

    python -m bench.writer_cost [--accounts 100000] [--groups 250,1000] [--rounds 2] [--json PATH]

Every commit, whichever worker makes it, holds LMDB's one writer lock while `Ledger.apply` runs
(the rules, the records read and written) and while its pages are written and synced. This times
`Ledger.apply` alone in this process on groups of the end-to-end driver's purchases (its receipts
and skewed customers, `--accounts` accounts seeded first), unsynced and durable, alternating, and
the rules alone: per purchase, and the ceiling it implies for one ledger, however many workers
share it (60,000,000 us a minute / the durable cost).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import REPO, Traffic, count_list, seed_ledger

MAP_SIZE_BYTES = 8 * 1024**3
HOLD_TTL_S = 900
US_PER_MIN = 60_000_000


def measure(accounts: int, groups: list[int], rounds: int, purchases_per_cell: int) -> dict:
    from kassa.core_ext import Ledger, Program, load_program
    from kassa.server.wire import accrue_op

    workdir = Path(tempfile.mkdtemp(prefix="kassa-writer-cost-"))
    try:
        seed_ledger(workdir / "ledger", accounts)
        program = Program(load_program([REPO / "config" / "rules"]))
        traffic = Traffic(1, accounts)
        cells = [(group, sync) for _ in range(rounds) for group in groups for sync in (False, True)]
        ops = [accrue_op(traffic.accrue_request("writer-cost")) for _ in range(len(cells) * purchases_per_cell)]
        now_ms = time.time_ns() // 1_000_000
        started = time.perf_counter()
        for op in ops[:purchases_per_cell]:
            program.calculate(op.receipt, now_ms, 0, 0)
        rules_us = (time.perf_counter() - started) / purchases_per_cell * 1e6
        costs: dict[tuple[int, bool], list[float]] = {}
        for index, (group, sync) in enumerate(cells):
            ledger = Ledger(str(workdir / "ledger"), program, MAP_SIZE_BYTES, HOLD_TTL_S, sync=sync)
            cell = ops[index * purchases_per_cell:(index + 1) * purchases_per_cell]
            spent_s = 0.0
            for first in range(0, len(cell), group):
                started = time.perf_counter()
                outcomes = ledger.apply(cell[first:first + group], now_ms)
                spent_s += time.perf_counter() - started
                failed = [outcome for outcome in outcomes if outcome.code != 0]
                if failed:
                    raise RuntimeError(f"a purchase was refused: {failed[0]}")
            ledger.close()
            costs.setdefault((group, sync), []).append(spent_s / len(cell) * 1e6)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for group in groups:
        durable = [round(cost, 1) for cost in costs[group, True]]
        rows.append({"group": group, "unsynced_us": [round(cost, 1) for cost in costs[group, False]],
                     "durable_us": durable, "ceiling_purchases_per_min": [round(US_PER_MIN / cost) for cost in durable]})
    return {"accounts": accounts, "rounds": rounds, "purchases_per_cell": purchases_per_cell,
            "rules_us": round(rules_us, 2), "groups": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--groups", type=count_list, default=[250, 1000], help="purchases per commit, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="times each (group, synced or not) cell is measured")
    parser.add_argument("--purchases", type=int, default=4000, help="purchases per cell")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if min(args.rounds, args.purchases, args.accounts) < 1:
        parser.error("--rounds, --purchases and --accounts must be at least 1")
    result = measure(args.accounts, args.groups, args.rounds, args.purchases)
    print(f"the rules alone: {result['rules_us']} us a purchase")
    for row in result["groups"]:
        print(f"groups of {row['group']:>5}: unsynced {' / '.join(map(str, row['unsynced_us']))} us, "
              f"durable {' / '.join(map(str, row['durable_us']))} us a purchase; one ledger commits at most "
              f"{' / '.join(f'{ceiling:,}' for ceiling in row['ceiling_purchases_per_min'])} a minute")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
