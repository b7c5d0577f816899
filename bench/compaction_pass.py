"""One compaction pass at soak scale: its steps, how long each held the writer, and the whole pass.

    python -m bench.compaction_pass [--accounts 100000] [--purchases 200000]

Seeds `--accounts` accounts and applies `--purchases` of the end-to-end driver's purchases (the
soak's 20 s of compaction interval at 10,000 purchases a second), then compacts past the soak's
windows (replay 120 s, return 300 s) twice, on two copies of the ledger: in steps of a fixed
COMPACT_RECORDS_PER_TXN_MAX records (before), and sized as the server sizes them
(`next_step_records`, COMPACT_STEP_MS_MAX a step). Prints steps, records, the median and longest
step and the pass's seconds (wall and CPU) for each. In the server one step goes into each commit group, between
the purchases: a pass needs as many groups as it has steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import REPO, Traffic, seed_ledger

MAP_SIZE_BYTES = 8 * 1024**3
HOLD_TTL_S = 900
GROUP_OPS = 1000  # purchases per commit
REPLAY_WINDOW_MS = 120_000
RETURN_WINDOW_MS = 300_000
PAST_WINDOWS_MS = RETURN_WINDOW_MS + 60_000
STEPS_MAX = 100_000  # a pass of more never ends


def open_ledger(path: Path):
    from kassa.core_ext import Ledger, Program, load_program

    return Ledger(str(path), Program(load_program([REPO / "config" / "rules"])), MAP_SIZE_BYTES, HOLD_TTL_S,
                  sync=False)


def build(path: Path, accounts: int, purchases: int) -> int:
    from kassa.server.wire import accrue_op

    seed_ledger(path, accounts)
    traffic = Traffic(1, accounts)
    ledger = open_ledger(path)
    bought_at_ms = time.time_ns() // 1_000_000
    for first in range(0, purchases, GROUP_OPS):
        ops = [accrue_op(traffic.accrue_request("compaction-pass")) for _ in range(min(GROUP_OPS, purchases - first))]
        for outcome in ledger.apply(ops, bought_at_ms):
            if outcome.code != 0:
                raise RuntimeError(f"a purchase was refused: {outcome}")
    ledger.close()
    return bought_at_ms


def one_pass(path: Path, now_ms: int, sized: bool) -> dict:
    from kassa.core_ext.compaction import COMPACT_RECORDS_PER_TXN_MAX
    from kassa.core_ext.model import CompactOp
    from kassa.server.servicers.admin import COMPACT_STEP_MS_MAX, next_step_records

    ledger = open_ledger(path)
    records_max, steps_ms, sizes, done = COMPACT_RECORDS_PER_TXN_MAX, [], [], {"dropped": 0, "forgotten": 0}
    started, started_cpu = time.perf_counter(), time.process_time()
    for _ in range(STEPS_MAX):
        step_started = time.perf_counter()
        (outcome,) = ledger.apply([CompactOp(REPLAY_WINDOW_MS, RETURN_WINDOW_MS, records_max)], now_ms)
        steps_ms.append((time.perf_counter() - step_started) * 1000)
        sizes.append(records_max)
        done["dropped"] += outcome.body.answers_dropped
        done["forgotten"] += outcome.body.requests_forgotten
        if not outcome.body.more:
            break
        if sized:
            records_max = next_step_records(records_max, outcome.body.step_us, COMPACT_STEP_MS_MAX)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    ledger.close()
    return {"steps": len(steps_ms), "records_max_largest": max(sizes), "answers_dropped": done["dropped"],
            "requests_forgotten": done["forgotten"], "step_ms_median": round(statistics.median(steps_ms), 1),
            "step_ms_max": round(max(steps_ms), 1), "pass_s": round(seconds, 2),
            "pass_cpu_s": round(cpu_seconds, 2)}


def measure(accounts: int, purchases: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="kassa-compaction-pass-"))
    try:
        bought_at_ms = build(workdir / "fixed", accounts, purchases)
        shutil.copytree(workdir / "fixed", workdir / "sized")
        now_ms = bought_at_ms + PAST_WINDOWS_MS
        return {"purchases": purchases, "fixed_steps": one_pass(workdir / "fixed", now_ms, sized=False),
                "sized_steps": one_pass(workdir / "sized", now_ms, sized=True)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--purchases", type=int, default=200_000)
    args = parser.parse_args(argv)
    if min(args.accounts, args.purchases) < 1:
        parser.error("--accounts and --purchases must be at least 1")
    print(json.dumps(measure(args.accounts, args.purchases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
