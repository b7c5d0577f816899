"""What a purchase leaves in the ledger: logical bytes (key + value) per database, per purchase.

    python -m bench.ledger_bytes [--accounts 10000] [--purchases 5000] [--group-ms 0]
                                 [--past-replay-window [--no-archive]]

Seeds `--accounts` accounts, applies `--purchases` of the end-to-end driver's purchases (its
receipts and skewed customers) in groups of GROUP_OPS, and prints, per database, how many bytes of
keys and values were added or grown per purchase (a rewritten record counts its growth only), and
the LMDB pages (of PAGE_BYTES) the database holds more per purchase, branch and leaf pages
included; the last line: the LMDB gets and puts per purchase, from `Ledger.last_group_calls`.

`--past-replay-window` then runs compaction (core_ext/compaction.py) a replay window (the
default, core_ext/retention.py) later, as the server does, and the journal archive with the
server's default period (core_ext/journal_archive/runner.py), and prints what each purchase keeps
in LMDB while inside the return window: its answer dropped (its transaction id, digest and time
kept, indexed in `aging`), its journal entry in the archive (whose compressed bytes a purchase the
last line gives). `--no-archive` leaves the journal as it is.

`--group-ms` applies each group that many ms after the one before, as a server's groups follow each
other (0, the default: every group at one time; records keyed by time then interleave).
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
DB_NAMES = ("accounts", "idents", "lots", "holds", "journal", "idempotency", "retained", "aging", "counters")
PAGE_BYTES = 4096  # LMDB's page on this platform


def _sizes(ledger) -> dict[str, tuple[int, int, int]]:
    """Per database: (records, key + value bytes, pages in use)."""
    sizes = {}
    with ledger.env.begin() as txn:
        for name in DB_NAMES:
            db = ledger.env.open_db(name.encode(), txn=txn, create=False)
            records = total = 0
            for key, value in txn.cursor(db=db):
                records += 1
                total += len(key) + len(value)
            stat = txn.stat(db)
            sizes[name] = (records, total, stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])
    return sizes


def _archive(ledger, now_ms: int) -> int:
    """The server's archive run at `now_ms` with the default config; the compressed bytes it wrote."""
    from kassa.core_ext.journal_archive.runner import archive_closed_period
    from kassa.server.config import LedgerSection

    return archive_closed_period(ledger, now_ms, LedgerSection()).bytes


def _compact(ledger, now_ms: int) -> None:
    """Compaction to the end at `now_ms`, with the default windows."""
    from kassa.core_ext.compaction import COMPACT_RECORDS_PER_TXN_MAX
    from kassa.core_ext.model import CompactOp
    from kassa.core_ext.retention import Retention

    windows = Retention()
    op = CompactOp(windows.replay_window_ms, windows.return_window_ms, COMPACT_RECORDS_PER_TXN_MAX)
    while True:
        (outcome,) = ledger.apply([op], now_ms)
        if outcome.code != 0:
            raise RuntimeError(f"compaction was refused: {outcome}")
        if not outcome.body.more:
            return


def measure(accounts: int, purchases: int, past_replay_window: bool = False, archive: bool = True,
            group_ms: int = 0) -> dict:
    from kassa.core_ext import Ledger, Program, load_program
    from kassa.core_ext.retention import Retention
    from kassa.server.wire import accrue_op

    workdir = Path(tempfile.mkdtemp(prefix="kassa-ledger-bytes-"))
    try:
        seed_ledger(workdir / "ledger", accounts)
        program = Program(load_program([REPO / "config" / "rules"]))
        traffic = Traffic(1, accounts)
        ops = [accrue_op(traffic.accrue_request("ledger-bytes")) for _ in range(purchases)]
        ledger = Ledger(str(workdir / "ledger"), program, MAP_SIZE_BYTES, HOLD_TTL_S, sync=False)
        now_ms = time.time_ns() // 1_000_000
        compact_at_ms = now_ms + Retention().replay_window_ms + 1 + purchases // GROUP_OPS * group_ms
        archived_bytes = 0
        if past_replay_window:  # the seed's records too, so that only the purchases' count
            _compact(ledger, compact_at_ms)
            if archive:
                _archive(ledger, compact_at_ms)
        before = _sizes(ledger)
        reads = writes = 0
        for first in range(0, purchases, GROUP_OPS):
            for outcome in ledger.apply(ops[first:first + GROUP_OPS], now_ms + first // GROUP_OPS * group_ms):
                if outcome.code != 0:
                    raise RuntimeError(f"a purchase was refused: {outcome}")
            reads += ledger.last_group_calls[0]
            writes += ledger.last_group_calls[1]
        if past_replay_window:
            _compact(ledger, compact_at_ms)
            if archive:
                archived_bytes = _archive(ledger, compact_at_ms)
        after = _sizes(ledger)
        ledger.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    sizes = {name: {"records_per_purchase": (after[name][0] - before[name][0]) / purchases,
                   "bytes_per_record": after[name][1] / after[name][0] if after[name][0] else 0.0,
                   "bytes_added_per_purchase": (after[name][1] - before[name][1]) / purchases,
                   "page_bytes_added_per_purchase": (after[name][2] - before[name][2]) * PAGE_BYTES / purchases}
            for name in DB_NAMES}
    return {"databases": sizes, "gets_per_purchase": reads / purchases, "puts_per_purchase": writes / purchases,
            "archive_bytes_per_purchase": archived_bytes / purchases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--purchases", type=int, default=5_000)
    parser.add_argument("--past-replay-window", action="store_true",
                        help="measure after compaction and the archive a replay window later (answers dropped, "
                             "entries archived)")
    parser.add_argument("--group-ms", type=int, default=0,
                        help="ms between one group's time and the next's (0: all at one time)")
    parser.add_argument("--no-archive", action="store_true", help="with --past-replay-window: no archive run")
    args = parser.parse_args(argv)
    if args.group_ms < 0:
        parser.error("--group-ms must be at least 0")
    if min(args.accounts, args.purchases) < 1:
        parser.error("--accounts and --purchases must be at least 1")
    result = measure(args.accounts, args.purchases, args.past_replay_window, not args.no_archive, args.group_ms)
    print(f"{'database':<12} {'records/purchase':>17} {'bytes/record':>13} {'bytes added/purchase':>21} "
          f"{'page bytes/purchase':>20}")
    for name, row in result["databases"].items():
        print(f"{name:<12} {row['records_per_purchase']:>17.2f} {row['bytes_per_record']:>13.1f} "
              f"{row['bytes_added_per_purchase']:>21.1f} {row['page_bytes_added_per_purchase']:>20.1f}")
    total = sum(row["bytes_added_per_purchase"] for row in result["databases"].values())
    pages = sum(row["page_bytes_added_per_purchase"] for row in result["databases"].values())
    print(f"{'all':<12} {'':>17} {'':>13} {total:>21.1f} {pages:>20.1f}")
    print(f"LMDB calls per purchase: {result['gets_per_purchase']:.2f} gets, {result['puts_per_purchase']:.2f} puts")
    if args.past_replay_window and not args.no_archive:
        print(f"archive: {result['archive_bytes_per_purchase']:.1f} compressed bytes per purchase")
    return 0


if __name__ == "__main__":
    sys.exit(main())
