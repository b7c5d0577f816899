"""Every proto file carries the per-language options client generators read, with one value each
across the package, and `buf lint` passes where buf is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
PROTOS = sorted((REPO / "proto" / "kassa" / "v1").glob("*.proto"))
SHARED_OPTIONS = ("go_package", "java_package", "java_multiple_files", "csharp_namespace")
LINT_TIMEOUT_S = 120
OPTION = re.compile(r"^option\s+(\w+)\s*=\s*(.+?);", re.MULTILINE)


def options(path: Path) -> dict[str, str]:
    return dict(OPTION.findall(path.read_text()))


class TestOptions:
    @pytest.mark.parametrize("path", PROTOS, ids=[p.name for p in PROTOS])
    def test_every_file_sets_the_language_options(self, path):
        assert set(SHARED_OPTIONS) <= set(options(path))

    @pytest.mark.parametrize("option", SHARED_OPTIONS)
    def test_every_file_gives_the_same_value(self, option):
        assert len({options(path).get(option) for path in PROTOS}) == 1

    def test_the_package_stays_kassa_v1(self):
        packages = {re.search(r"^package\s+([\w.]+);", path.read_text(), re.MULTILINE).group(1) for path in PROTOS}
        assert packages == {"kassa.v1"}


@pytest.mark.skipif(shutil.which("buf") is None, reason="buf is not installed (npm install -g @bufbuild/buf)")
def test_buf_lint_passes():
    done = subprocess.run(["buf", "lint"], cwd=REPO, capture_output=True, text=True, timeout=LINT_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
