"""How kassa scales with `--workers` on a machine with cores to spare.

    python -m bench.scaling --workers 1,2,4,8 --modes noop-unary,unary,stream --duration 6

For each worker count N and each mode, one `bench.throughput` run with the server on the first N
usable CPUs and the load driver on the CPUs after the largest N (or `--driver-cpus`): the driver
has the same CPUs in every run and never shares one with the server, so what grows is the
server's share of the machine alone. The offered load is the same for every N
(UNARY_CONCURRENCY calls in flight, STREAMS streams). Prints each run and a table of speed-ups
against the smallest N; writes every result to bench/results/scaling-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import throughput
from kassa.server.cpus import usable_cpus

RESULTS = Path(__file__).resolve().parent / "results"
UNARY_CONCURRENCY = 128  # calls in flight, unary modes and batch
STREAMS = 32  # streams, stream modes
BATCH_SIZE = 250  # purchases per stream message or ProcessBatch call: 16,000 in flight at most
STREAM_WINDOW = 2  # unacked messages per stream


def scaling_args(mode: str, workers: int, server_cpus: list[int], driver_cpus: list[int], duration_s: float,
                 warmup_s: float) -> argparse.Namespace:
    streamed = mode in ("stream", "noop-stream")
    return throughput.parse_args([
        "--mode", mode, "--workers", str(workers), "--duration", str(duration_s), "--warmup", str(warmup_s),
        "--concurrency", str(STREAMS if streamed else UNARY_CONCURRENCY),
        "--batch-size", str(BATCH_SIZE), "--window", str(STREAM_WINDOW if streamed else 1),
        "--server-cpus", ",".join(map(str, server_cpus)), "--driver-cpus", ",".join(map(str, driver_cpus)),
    ])


def speedups(results: list[dict]) -> list[dict]:
    """Each run's calls/s against the same mode's run with the fewest workers."""
    first: dict[str, dict] = {}
    rows = []
    for result in sorted(results, key=lambda r: r["workers"]):
        base = first.setdefault(result["mode"], result)
        rows.append({"mode": result["mode"], "workers": result["workers"], "calls_per_s": result["calls_per_s"],
                     "purchases_per_min": result["purchases_per_min"],
                     "speedup": result["calls_per_s"] / base["calls_per_s"] if base["calls_per_s"] else 0.0,
                     "base_workers": base["workers"]})
    return sorted(rows, key=lambda row: row["mode"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=throughput.count_list, default=[1, 2, 4, 8],
                        help="worker counts, comma-separated")
    parser.add_argument("--modes", default="noop-unary,unary,stream", help="modes, comma-separated")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per run before measuring")
    parser.add_argument("--driver-cpus", type=throughput.cpu_list, default=None,
                        help="the load driver's CPUs (default: those after the largest count's)")
    args = parser.parse_args(argv)
    counts = sorted(set(args.workers))
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in throughput.MODES:
            parser.error(f"--modes: {mode!r} is not one of {', '.join(throughput.MODES)}")
    cpus = usable_cpus()
    if counts[-1] >= len(cpus):
        parser.error(f"--workers: each count must be 1..{len(cpus) - 1}: the driver needs CPUs of its own "
                     f"beside the largest count's ({len(cpus)} usable)")
    driver_cpus = args.driver_cpus or cpus[counts[-1]:]
    if set(driver_cpus) & set(cpus[:counts[-1]]):
        parser.error(f"--driver-cpus: {driver_cpus} overlap the server's CPUs {cpus[:counts[-1]]}")
    print(f"{len(cpus)} usable CPUs; driver on {driver_cpus}", flush=True)

    results = []
    for workers in counts:
        for mode in modes:
            result = throughput.run(scaling_args(mode, workers, cpus[:workers], driver_cpus, args.duration,
                                                 args.warmup))
            results.append(result)
            throughput.print_table([result])
            sys.stdout.flush()
    throughput.print_table(results)
    print(f"\n{'mode':<12} {'workers':>7} {'calls/s':>10} {'purchases/min':>14} {'speed-up':>9}")
    for row in speedups(results):
        print(f"{row['mode']:<12} {row['workers']:>7} {row['calls_per_s']:>10,.0f} {row['purchases_per_min']:>14,} "
              f"{row['speedup']:>8.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"scaling-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"results": results, "speedups": speedups(results)}, indent=2) + "\n")
    print(f"written: {out}")
    return 0 if all(result["verify_ok"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
