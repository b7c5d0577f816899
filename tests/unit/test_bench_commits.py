"""bench.throughput reports the server's group commits: how many, and how many operations each
carried, from the workers' own `stopped` lines, so a run shows whether group commit was grouping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.throughput import commit_counts, print_table

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


def test_the_table_shows_operations_per_commit_and_a_dash_where_nothing_was_committed(capsys):
    row = {"workers": 2, "concurrency": 64, "batch_size": 1, "purchases_per_min": 0, "calls_per_s": 1.0,
           "latency_ms": {"p50": 1.0, "p99": 2.0, "max": 3.0}, "durable": True, "verify_ok": True}
    print_table([
        {**row, "mode": "noop-unary", "commits": {"groups": 0, "operations": 0, "operations_per_group": 0.0}},
        {**row, "mode": "unary", "commits": {"groups": 3, "operations": 17, "operations_per_group": 5.7}},
    ])
    noop, unary = capsys.readouterr().out.splitlines()[2:]
    assert noop.split()[-3] == "-"
    assert unary.split()[-3] == "5.7"
