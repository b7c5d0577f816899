"""What a purchase costs in the journal archive: compressed bytes per purchase, beside its journal bytes.

    python -m bench.archive_bytes [--accounts 10000] [--purchases 20000]

Seeds `--accounts` accounts, applies `--purchases` of the end-to-end driver's purchases (its
receipts and skewed customers) a day later in groups of GROUP_OPS, then archives the seed's entries
and the purchases' as two closed periods and prints the purchases' segment bytes per purchase, the
journal's key + value bytes per purchase they replaced, and the archiving rate: entries per second of
wall time, and per second of this process's CPU time (one core; what a shared machine's load does
not change).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import REPO, Traffic, seed_ledger

MAP_SIZE_BYTES = 2 * 1024**3
HOLD_TTL_S = 900
GROUP_OPS = 1000  # purchases per commit
DAY_MS = 86_400_000


def measure(accounts: int, purchases: int) -> dict:
    from kassa.core_ext import Ledger, Program, load_program
    from kassa.core_ext.journal_archive import archive_dir_of, archive_journal
    from kassa.server.wire import accrue_op

    workdir = Path(tempfile.mkdtemp(prefix="kassa-archive-bytes-"))
    try:
        seed_ledger(workdir / "ledger", accounts)
        traffic = Traffic(1, accounts)
        ops = [accrue_op(traffic.accrue_request("archive-bytes")) for _ in range(purchases)]
        ledger = Ledger(str(workdir / "ledger"), Program(load_program([REPO / "config" / "rules"])),
                        MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)
        bought_at_ms = time.time_ns() // 1_000_000 + DAY_MS
        for first in range(0, purchases, GROUP_OPS):
            for outcome in ledger.apply(ops[first:first + GROUP_OPS], bought_at_ms):
                if outcome.code != 0:
                    raise RuntimeError(f"a purchase was refused: {outcome}")
        _, dbs = ledger.raw_transaction()
        directory = archive_dir_of(ledger.path)
        archive_journal(ledger.env, dbs, directory, bought_at_ms, now_ms=bought_at_ms)  # the seed's period
        with ledger.env.begin() as txn:
            journal_bytes = sum(len(key) + len(value) for key, value in txn.cursor(db=dbs["journal"]))
        started, started_cpu = time.perf_counter(), time.process_time()
        result = archive_journal(ledger.env, dbs, directory, bought_at_ms + 1, now_ms=bought_at_ms + 1)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
        ledger.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"purchases": purchases, "entries": result.entries, "segments": len(result.segments),
            "archive_bytes_per_purchase": round(result.bytes / purchases, 1),
            "journal_bytes_per_purchase": round(journal_bytes / purchases, 1),
            "archive_entries_per_s": round(result.entries / seconds),
            "archive_entries_per_cpu_s": round(result.entries / cpu_seconds)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--purchases", type=int, default=20_000)
    args = parser.parse_args(argv)
    if min(args.accounts, args.purchases) < 1:
        parser.error("--accounts and --purchases must be at least 1")
    print(json.dumps(measure(args.accounts, args.purchases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
