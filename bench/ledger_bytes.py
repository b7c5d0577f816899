"""What a purchase leaves in the ledger: logical bytes (key + value) per database, per purchase.

    python -m bench.ledger_bytes [--accounts 10000] [--purchases 5000]

Seeds `--accounts` accounts, applies `--purchases` of the end-to-end driver's purchases (its
receipts and skewed customers) in groups of GROUP_OPS, and prints, per database, how many bytes of
keys and values were added or grown per purchase (a rewritten record counts its growth only; the
last line: the LMDB gets and puts per purchase, from `Ledger.last_group_calls`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import REPO, Traffic, seed_ledger

MAP_SIZE_BYTES = 2 * 1024**3
HOLD_TTL_S = 900
GROUP_OPS = 1000  # purchases per commit
DB_NAMES = ("accounts", "idents", "lots", "holds", "journal", "idempotency", "counters")


def _sizes(ledger) -> dict[str, tuple[int, int]]:
    """Per database: (records, key + value bytes)."""
    sizes = {}
    with ledger.env.begin() as txn:
        for name in DB_NAMES:
            db = ledger.env.open_db(name.encode(), txn=txn, create=False)
            records = total = 0
            for key, value in txn.cursor(db=db):
                records += 1
                total += len(key) + len(value)
            sizes[name] = (records, total)
    return sizes


def measure(accounts: int, purchases: int) -> dict:
    from kassa.core_ext import Ledger, Program, load_program
    from kassa.server.wire import accrue_op

    workdir = Path(tempfile.mkdtemp(prefix="kassa-ledger-bytes-"))
    try:
        seed_ledger(workdir / "ledger", accounts)
        program = Program(load_program([REPO / "config" / "rules"]))
        traffic = Traffic(1, accounts)
        ops = [accrue_op(traffic.accrue_request("ledger-bytes")) for _ in range(purchases)]
        ledger = Ledger(str(workdir / "ledger"), program, MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)
        before = _sizes(ledger)
        now_ms = time.time_ns() // 1_000_000
        reads = writes = 0
        for first in range(0, purchases, GROUP_OPS):
            for outcome in ledger.apply(ops[first:first + GROUP_OPS], now_ms):
                if outcome.code != 0:
                    raise RuntimeError(f"a purchase was refused: {outcome}")
            reads += ledger.last_group_calls[0]
            writes += ledger.last_group_calls[1]
        after = _sizes(ledger)
        ledger.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    sizes = {name: {"records_per_purchase": (after[name][0] - before[name][0]) / purchases,
                   "bytes_per_record": after[name][1] / after[name][0] if after[name][0] else 0.0,
                   "bytes_added_per_purchase": (after[name][1] - before[name][1]) / purchases}
            for name in DB_NAMES}
    return {"databases": sizes, "gets_per_purchase": reads / purchases, "puts_per_purchase": writes / purchases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--purchases", type=int, default=5_000)
    args = parser.parse_args(argv)
    if min(args.accounts, args.purchases) < 1:
        parser.error("--accounts and --purchases must be at least 1")
    result = measure(args.accounts, args.purchases)
    print(f"{'database':<12} {'records/purchase':>17} {'bytes/record':>13} {'bytes added/purchase':>21}")
    for name, row in result["databases"].items():
        print(f"{name:<12} {row['records_per_purchase']:>17.2f} {row['bytes_per_record']:>13.1f} "
              f"{row['bytes_added_per_purchase']:>21.1f}")
    print(f"LMDB calls per purchase: {result['gets_per_purchase']:.2f} gets, {result['puts_per_purchase']:.2f} puts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
