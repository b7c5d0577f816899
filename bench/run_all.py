"""`make bench`: the standard set in about five minutes, results under bench/results/.

Each end-to-end mode beside its no-op baseline (same run, same machine), then the core's
microbenchmarks (rule evaluation, commit cost by batch size) with pytest-benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import throughput

RESULTS = Path(__file__).resolve().parent / "results"
DURATION_S = 15  # measured seconds per mode
WARMUP_S = 3  # seconds per mode before measuring
WORKERS = os.cpu_count() or 1
RUNS = (  # (mode, concurrency, batch size, stream window): a billing system's stream message and a
    # batch carry 1,000 purchases; each stream keeps 2 messages unacked
    ("noop-unary", 64, 1, 1),
    ("unary", 64, 1, 1),
    ("noop-stream", 16, 1000, 2),
    ("stream", 16, 1000, 2),
    ("batch", 16, 1000, 1),
)


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = []
    for mode, concurrency, batch_size, window in RUNS:
        args = throughput.parse_args([
            "--mode", mode, "--duration", str(DURATION_S), "--warmup", str(WARMUP_S),
            "--concurrency", str(concurrency), "--workers", str(WORKERS), "--batch-size", str(batch_size),
            "--window", str(window),
        ])
        result = throughput.run(args)
        results.append(result)
        print(f"{mode}: {result['purchases_per_min']:,} purchases/min", flush=True)
    throughput.print_table(results)
    (RESULTS / f"throughput-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    micro = subprocess.run([
        sys.executable, "-m", "pytest", "bench/test_core_rules.py", "bench/test_commit_cost.py", "-q",
        "-p", "no:cacheprovider", f"--benchmark-json={RESULTS / f'micro-{stamp}.json'}",
        "--benchmark-columns=min,mean,median,ops",
    ])
    ok = all(result["verify_ok"] for result in results) and micro.returncode == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
