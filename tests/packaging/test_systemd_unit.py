"""config/systemd/kassa.service: systemd accepts it, and it stops kassa the way kassa drains."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
UNIT = REPO / "config" / "systemd" / "kassa.service"
INSTALLED_KASSA = "/opt/kassa/bin/kassa"  # where the unit expects the venv's console script
VERIFY_TIMEOUT_S = 60


def service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def verify(unit_text: str, folder: Path) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on a copy whose ExecStart names an executable that exists here
    (verify checks that it does; where kassa is installed is the one thing this machine differs in)."""
    executable = folder / "kassa"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit = folder / "kassa.service"
    unit.write_text(unit_text.replace(INSTALLED_KASSA, str(executable)))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=VERIFY_TIMEOUT_S, cwd=folder)


class TestTheUnit:
    def test_stop_waits_longer_than_the_drain(self):
        grace_s = tomllib.loads((REPO / "config" / "kassa.toml").read_text())["server"]["grace_s"]
        assert int(service_section()["TimeoutStopSec"]) > grace_s

    def test_stop_is_sigterm_to_the_supervisor(self):
        service = service_section()
        assert service["KillSignal"] == "SIGTERM"
        assert service["KillMode"] == "mixed"  # the supervisor passes SIGTERM on to its workers itself

    def test_it_starts_the_installed_console_script(self):
        assert service_section()["ExecStart"].startswith(f"{INSTALLED_KASSA} serve ")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
class TestSystemdAnalyzeVerify:
    def test_systemd_accepts_the_unit_without_a_word(self, tmp_path):
        done = verify(UNIT.read_text(), tmp_path)
        assert done.returncode == 0
        assert done.stdout + done.stderr == ""

    def test_verify_here_reports_a_misspelt_key(self, tmp_path):
        """The check above can fail: this systemd reports what it does not understand."""
        done = verify(UNIT.read_text().replace("KillMode=", "KilMode="), tmp_path)
        assert "KilMode" in done.stderr
