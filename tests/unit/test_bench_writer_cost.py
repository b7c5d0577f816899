"""`bench.writer_cost`: a real ledger's cost per purchase inside the writer lock, reported for every
group size and round asked for, with the ceiling it implies."""

from __future__ import annotations

import json

import pytest

from bench.writer_cost import US_PER_MIN, main


def test_every_cell_is_measured_and_the_ceiling_follows_from_the_durable_cost(tmp_path):
    out = tmp_path / "cost.json"
    assert main(["--accounts", "500", "--groups", "5,20", "--rounds", "2", "--purchases", "40",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rules_us"] > 0
    assert [row["group"] for row in result["groups"]] == [5, 20]
    for row in result["groups"]:
        assert len(row["unsynced_us"]) == 2
        assert len(row["durable_us"]) == 2
        assert min(row["unsynced_us"] + row["durable_us"]) > 0
        assert row["ceiling_purchases_per_min"] == [round(US_PER_MIN / cost) for cost in row["durable_us"]]


@pytest.mark.parametrize("argv, says", [
    (["--groups", "5,x"], "--groups: '5,x' is not a comma-separated list of counts"),
    (["--groups", "0"], "--groups: '0': every count must be at least 1"),
    (["--rounds", "0"], "--rounds, --purchases and --accounts must be at least 1"),
])
def test_what_it_cannot_measure_is_refused(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err
