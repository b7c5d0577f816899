"""`kassa backup` where the copy cannot go: one line on stderr, exit 2, no traceback, and nothing left
behind (a failed backup removes the directories it created and what it wrote)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.server.helpers import open_account

TARGET_DISK_BYTES = 16 * 1024  # a tmpfs far smaller than the ledger's copy


def backup(kassa, target, **environ) -> subprocess.CompletedProcess:
    if environ:
        kassa.extra_env.update(environ)
    return kassa.run_cli("backup", str(target), "--config", str(kassa.config_path()))


def assert_one_line(result: subprocess.CompletedProcess, said: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [said]
    assert result.stdout == ""


class TestBackupRefusals:
    def test_onto_an_existing_file(self, kassa, tmp_path):
        target = tmp_path / "copy.mdb"
        target.write_text("mine")

        result = backup(kassa, target)

        assert_one_line(result, f"kassa backup: {target} exists and is not a directory")
        assert target.read_text() == "mine"

    def test_into_a_path_that_cannot_be_created(self, kassa, tmp_path):
        (tmp_path / "a-file").write_text("mine")
        target = tmp_path / "a-file" / "copy"

        result = backup(kassa, target)

        assert_one_line(result, f"kassa backup: cannot create {target}: Not a directory")
        assert (tmp_path / "a-file").read_text() == "mine"

    def test_without_a_ledger_it_creates_nothing(self, kassa, tmp_path):
        target = tmp_path / "new" / "nested" / "copy"

        result = backup(kassa, target, KASSA_LEDGER_PATH=str(tmp_path / "no-ledger"))

        assert_one_line(result, f"kassa backup: no ledger at {tmp_path / 'no-ledger'}")
        assert not (tmp_path / "new").exists()

    def test_a_copy_that_runs_out_of_space_leaves_nothing_behind(self, kassa, tmp_path):
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        open_account(kassa, "BACKUP-1")
        disk = tmp_path / "disk"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TARGET_DISK_BYTES},mode=0755", "tmpfs", str(disk)],
                       check=True)
        try:
            target = disk / "new" / "copy"

            result = backup(kassa, target)

            assert result.returncode == 2, result.stdout + result.stderr
            assert len(result.stderr.splitlines()) == 1, result.stderr
            assert result.stderr.startswith(f"kassa backup: cannot write {target}: "), result.stderr
            assert list(disk.iterdir()) == []
        finally:
            subprocess.run(["umount", str(disk)], check=True)
