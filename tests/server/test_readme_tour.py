"""The README's two-minute tour, run as written against a real server with the sample program:
it prints what the README says it prints (the hold's expiry time aside, which depends on the clock)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOUR_HEADING = "## A two-minute tour"
EXPIRY = re.compile(r"held until \S+")


def readme_blocks() -> tuple[str, list[str]]:
    """The tour's Python code and the output the README shows for it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    tour = text[text.index(TOUR_HEADING):]
    code = re.search(r"```python\n(.*?)```", tour, re.S).group(1)
    shown = re.search(r"it prints.*?\n```\n(.*?)```", tour, re.S).group(1)
    return code, shown.strip().splitlines()


def test_the_tour_prints_what_the_readme_shows(kassa, tmp_path):
    code, shown = readme_blocks()
    assert '"127.0.0.1:50051"' in code
    script = tmp_path / "tour.py"
    script.write_text(code.replace('"127.0.0.1:50051"', f'"{kassa.address}"'))

    run = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert run.returncode == 0, run.stderr
    printed = run.stdout.strip().splitlines()
    assert [EXPIRY.sub("held until <time>", line) for line in printed] == \
        [EXPIRY.sub("held until <time>", line) for line in shown]
