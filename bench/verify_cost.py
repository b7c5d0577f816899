"""What `kassa verify` costs on a big ledger: its time and its peak memory.

    python -m bench.verify_cost --ledger DIR [--accounts 100000] [--purchases 1000000] [--archived-share-pct 50]

Builds the ledger at DIR once (kept for later runs: a second run with the same DIR only measures):
`--accounts` accounts, then `--purchases` of the end-to-end driver's purchases in groups of
GROUP_OPS, the first `--archived-share-pct` % a day earlier than the rest and archived. Then runs
`Ledger.verify` in a child process (this tree's code, or PYTHONPATH's) and prints its violations
count, wall seconds and peak resident memory: the child's ru_maxrss, which counts the pages of the
ledger's file that LMDB's memory map touched (shared with the page cache, given back under pressure),
and the peak of its anonymous memory (RssAnon, sampled every ANON_SAMPLE_S): what verify itself holds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.throughput import REPO, Traffic, seed_ledger

MAP_SIZE_BYTES = 16 * 1024**3
HOLD_TTL_S = 900
GROUP_OPS = 2000  # purchases per commit
DAY_MS = 86_400_000
PERCENT = 100
ANON_SAMPLE_S = 0.2


def anon_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
    return 0


class AnonPeak(threading.Thread):
    """The peak of this process's anonymous resident memory while it runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib = anon_mib()
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(ANON_SAMPLE_S):
            self.peak_mib = max(self.peak_mib, anon_mib())


def build(path: Path, accounts: int, purchases: int, archived_share_pct: int) -> None:
    from kassa.core_ext import Ledger, Program, load_program
    from kassa.core_ext.journal_archive import archive_dir_of, archive_journal
    from kassa.server.wire import accrue_op

    seed_ledger(path, accounts)
    traffic = Traffic(1, accounts)
    ledger = Ledger(str(path), Program(load_program([REPO / "config" / "rules"])), MAP_SIZE_BYTES, HOLD_TTL_S,
                    sync=False)
    archived = purchases * archived_share_pct // PERCENT
    first_day_ms = time.time_ns() // 1_000_000 + DAY_MS
    for first in range(0, purchases, GROUP_OPS):
        ops = [accrue_op(traffic.accrue_request("verify-cost")) for _ in range(min(GROUP_OPS, purchases - first))]
        at_ms = first_day_ms + (DAY_MS if first >= archived else 0)
        for outcome in ledger.apply(ops, at_ms):
            if outcome.code != 0:
                raise RuntimeError(f"a purchase was refused: {outcome}")
    _, dbs = ledger.raw_transaction()
    archive_journal(ledger.env, dbs, archive_dir_of(ledger.path), first_day_ms + DAY_MS, now_ms=first_day_ms + DAY_MS)
    ledger.env.sync(True)
    ledger.close()
    (path / "verify-cost.json").write_text(json.dumps({"now_ms": first_day_ms + 2 * DAY_MS, "purchases": purchases}))


def verify_in_child(path: Path) -> dict:
    """Runs in the child: verify the ledger, print what it found."""
    from kassa.core_ext import Ledger, Program, load_program

    now_ms = json.loads((path / "verify-cost.json").read_text())["now_ms"]
    ledger = Ledger(str(path), Program(load_program([REPO / "config" / "rules"])), MAP_SIZE_BYTES, HOLD_TTL_S)
    sampler = AnonPeak()
    sampler.start()
    started = time.perf_counter()
    violations = ledger.verify(now_ms)
    seconds = time.perf_counter() - started
    sampler.stopped.set()
    ledger.close()
    return {"violations": len(violations), "first_violations": violations[:3], "verify_s": round(seconds, 1),
            "peak_anon_mib": max(sampler.peak_mib, anon_mib())}


def measure(path: Path) -> dict:
    child = subprocess.run([sys.executable, "-m", "bench.verify_cost", "--ledger", str(path), "--child"],
                           capture_output=True, text=True, check=True)
    found = json.loads(child.stdout.splitlines()[-1])
    found["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    found["purchases"] = json.loads((path / "verify-cost.json").read_text())["purchases"]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--purchases", type=int, default=1_000_000)
    parser.add_argument("--archived-share-pct", type=int, default=50)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(verify_in_child(args.ledger)))
        return 0
    if not (args.ledger / "verify-cost.json").exists():
        build(args.ledger, args.accounts, args.purchases, args.archived_share_pct)
    print(json.dumps(measure(args.ledger)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
