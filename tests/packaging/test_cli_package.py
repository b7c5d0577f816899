"""`kassa --version`, `kassa init` and the hint of `kassa serve` without a config, run from the
source tree as a real process (the installed wheel runs the same in test_wheel.py)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
COMMAND_TIMEOUT_S = 60  # seconds for one `kassa` command
SAMPLE_FILES = {"kassa.toml", "rules/program.toml", "rules/campaigns.toml", "systemd/kassa.service"}


def kassa(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kassa.server.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


class TestVersion:
    def test_kassa_version_prints_the_version_of_pyproject(self, tmp_path):
        done = kassa("--version", cwd=tmp_path)
        assert done.returncode == 0
        assert done.stdout.strip() == f"kassa {VERSION}"


class TestInit:
    def test_init_writes_the_sample_config_and_program(self, tmp_path):
        done = kassa("init", tmp_path / "shop", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        written = {str(path.relative_to(tmp_path / "shop" / "config")) for path in (tmp_path / "shop").rglob("*")
                   if path.is_file()}
        assert SAMPLE_FILES <= written

    def test_the_written_program_passes_rules_check(self, tmp_path):
        kassa("init", ".", cwd=tmp_path)
        done = kassa("rules", "check", "config/rules", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("ok: ")

    def test_init_overwrites_nothing(self, tmp_path):
        kassa("init", ".", cwd=tmp_path)
        config = tmp_path / "config" / "kassa.toml"
        config.write_text("# mine\n")
        done = kassa("init", ".", cwd=tmp_path)
        assert done.returncode == 2
        assert config.read_text() == "# mine\n"


class TestServeWithoutConfig:
    def test_the_refusal_says_where_to_get_a_config(self, tmp_path):
        done = kassa("serve", cwd=tmp_path)
        assert done.returncode == 2
        assert "`kassa init DIR`" in done.stderr

    def test_the_refusal_names_the_missing_file(self, tmp_path):
        done = kassa("verify", "--config", tmp_path / "nowhere.toml", cwd=tmp_path)
        assert done.returncode == 2
        assert str(tmp_path / "nowhere.toml") in done.stderr
