"""bench.throughput reports the server's group commits: how many, and how many operations each
carried, from the workers' own `stopped` lines, so a run shows whether group commit was grouping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.throughput import commit_counts

REPO = Path(__file__).resolve().parents[2]


def test_a_durable_unary_run_reports_every_purchase_committed_in_groups(tmp_path):
    out = tmp_path / "run.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--mode", "unary", "--duration", "1", "--warmup", "0.5",
         "--concurrency", "16", "--accounts", "1000", "--workers", "2", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    commits = result["commits"]
    # The warm-up's purchases are committed too: at least the measured ones.
    assert commits["operations"] >= result["purchases"] > 0
    assert 1 <= commits["groups"] <= commits["operations"]
    assert commits["operations_per_group"] == round(commits["operations"] / commits["groups"], 1)
    assert "ops/commit" in run.stdout


def test_the_counts_are_summed_over_the_workers_stopped_lines():
    log = "\n".join([
        '{"msg":"serving","worker":0}',
        '{"msg":"stopped","worker":0,"groups_committed":3,"ops_committed":30}',
        "a line that is not JSON",
        '{"msg":"stopped","worker":1,"groups_committed":1,"ops_committed":4}',
    ])
    assert commit_counts(log) == {"groups": 4, "operations": 34, "operations_per_group": 8.5}


def test_a_server_that_committed_nothing_reports_no_groups():
    log = '{"msg":"stopped","worker":0,"groups_committed":0,"ops_committed":0}'
    assert commit_counts(log) == {"groups": 0, "operations": 0, "operations_per_group": 0.0}
