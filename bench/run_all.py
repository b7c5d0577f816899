"""`make bench`: the standard set in about three minutes, results under bench/results/.

Each end-to-end mode beside its no-op baseline (same run, same machine), then the core's
microbenchmarks (rule evaluation, commit cost by batch size) with pytest-benchmark. `unary` and
`noop-unary` alternate for a few short rounds, so that the machine's drift over the minutes hits
both alike, and each round's unary is compared with the baseline just before it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import throughput
from kassa.server.cpus import usable_cpus

RESULTS = Path(__file__).resolve().parent / "results"
DURATION_S = 15  # measured seconds per stream or batch run
UNARY_ROUND_S = 8  # measured seconds per unary or noop-unary round
UNARY_ROUNDS = 3
WARMUP_S = 3  # seconds per run before measuring
WORKERS = len(usable_cpus())  # one server worker per core, as `kassa serve` starts by default
UNARY_CONCURRENCY = 64
UNARY_CALLS_SHARE_MIN = 0.85  # DESIGN §6: unary calls/s at least this share of the no-op's
UNARY_P99_RATIO_MAX = 1.25  # and its p99 at most this many times the no-op's
RUNS = (  # (mode, measured seconds, concurrency, batch size, stream window): a billing system's
    # stream message and a batch carry 1,000 purchases; each stream keeps 2 messages unacked
    *[run for _ in range(UNARY_ROUNDS) for run in (("noop-unary", UNARY_ROUND_S, UNARY_CONCURRENCY, 1, 1),
                                                  ("unary", UNARY_ROUND_S, UNARY_CONCURRENCY, 1, 1))],
    ("noop-stream", DURATION_S, 16, 1000, 2),
    ("stream", DURATION_S, 16, 1000, 2),
    ("batch", DURATION_S, 16, 1000, 1),
)


def unary_rounds(results: list[dict]) -> list[dict]:
    """Each unary run against the noop-unary run just before it."""
    rounds = []
    for baseline, measured in zip(results, results[1:]):
        if baseline["mode"] == "noop-unary" and measured["mode"] == "unary":
            rounds.append({
                "calls_share": measured["calls_per_s"] / baseline["calls_per_s"],
                "p99_ratio": measured["latency_ms"]["p99"] / baseline["latency_ms"]["p99"],
            })
    return rounds


def print_unary_rounds(rounds: list[dict]) -> None:
    shares = [r["calls_share"] for r in rounds]
    ratios = [r["p99_ratio"] for r in rounds]
    print(f"unary against noop-unary, round by round: calls/s "
          f"{' / '.join(f'{share:.1%}' for share in shares)} (median {statistics.median(shares):.1%}, "
          f"target >= {UNARY_CALLS_SHARE_MIN:.0%}); p99 {' / '.join(f'{ratio:.2f}x' for ratio in ratios)} "
          f"(median {statistics.median(ratios):.2f}x, target <= {UNARY_P99_RATIO_MAX}x)")


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = []
    for mode, duration_s, concurrency, batch_size, window in RUNS:
        args = throughput.parse_args([
            "--mode", mode, "--duration", str(duration_s), "--warmup", str(WARMUP_S),
            "--concurrency", str(concurrency), "--workers", str(WORKERS), "--batch-size", str(batch_size),
            "--window", str(window),
        ])
        result = throughput.run(args)
        results.append(result)
        print(f"{mode}: {result['purchases_per_min']:,} purchases/min", flush=True)
    throughput.print_table(results)
    rounds = unary_rounds(results)
    print_unary_rounds(rounds)
    (RESULTS / f"throughput-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"unary-rounds-{stamp}.json").write_text(json.dumps(rounds, indent=2) + "\n")
    micro = subprocess.run([
        sys.executable, "-m", "pytest", "bench/test_core_rules.py", "bench/test_commit_cost.py", "-q",
        "-p", "no:cacheprovider", f"--benchmark-json={RESULTS / f'micro-{stamp}.json'}",
        "--benchmark-columns=min,mean,median,ops",
    ])
    ok = all(result["verify_ok"] for result in results) and micro.returncode == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
