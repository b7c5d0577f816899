"""The wheel as an integrator gets it: built from this tree, installed into a clean venv with its
declared dependencies from the package index pip is set up with, then run from that venv alone
(no source tree on the path): `kassa --version`, `kassa init` + `kassa rules check` on the sample
program, and `kassa serve` answering a grpc.health.v1 check until SIGTERM ends it.

The wheel is built with --no-build-isolation from the test environment so that the compiled modules
`make build` left in build/ are reused (a build from scratch takes minutes on two cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
BUILD_TIMEOUT_S = 600  # seconds for `pip wheel` (compiles only what build/ lacks)
INSTALL_TIMEOUT_S = 300  # seconds for the venv and `pip install` (wheels from pip's cache or the index)
COMMAND_TIMEOUT_S = 60  # seconds for one `kassa` command
SERVE_TIMEOUT_S = 30  # seconds for the server to say it serves, and then to exit after SIGTERM
HEALTH_TIMEOUT_S = 10  # seconds for the health check's answer
LEDGER_MAP_SIZE_BYTES = 64 * 1024 * 1024


def run(command: list, timeout_s: float, **options) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout_s, **options)
    assert done.returncode == 0, f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--no-deps",
         "--wheel-dir", dist, REPO], BUILD_TIMEOUT_S, cwd=REPO)
    (built,) = dist.glob("kassa-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A venv with nothing but the wheel and what it declares it depends on, at the versions of
    requirements.txt (constraints, not requirements: a dependency missing from pyproject.toml is
    missing here too). No pip of its own: the test's pip installs into it. No PYTHONPATH: with the
    tree on it, pip would take the tree's kassa.egg-info for kassa installed already."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root], INSTALL_TIMEOUT_S, env=installed_environ())
    run([sys.executable, "-m", "pip", "--python", root / "bin" / "python", "install", "--quiet",
         wheel, "-c", REPO / "requirements.txt"], INSTALL_TIMEOUT_S, env=installed_environ())
    return root


def installed_environ(**extra: str) -> dict[str, str]:
    """The environment without the test's PYTHONPATH (it names this tree) and without KASSA_* settings."""
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("PYTHON", "KASSA_")) and key != "VIRTUAL_ENV"}
    return {**environ, **extra}


class TestTheWheel:
    def test_it_ships_everything_under_the_kassa_name(self, wheel):
        names = zipfile.ZipFile(wheel).namelist()
        top_level = {name.split("/")[0] for name in names}
        assert top_level == {"kassa", f"kassa-{VERSION}.dist-info"}

    def test_it_ships_the_compiled_core_the_stubs_and_the_samples(self, wheel):
        names = set(zipfile.ZipFile(wheel).namelist())
        for module in ("kassa/core_ext/ledger/core", "kassa/core_ext/rules", "kassa/server/wire", "kassa/server/checks"):
            assert any(name.startswith(module + ".") and name.endswith(".so") for name in names), module
        for path in ("kassa/v1/processing_pb2.py", "kassa/v1/processing_pb2_grpc.py", "kassa/config/kassa.toml",
                     "kassa/config/rules/program.toml", "kassa/config/systemd/kassa.service",
                     f"kassa-{VERSION}.dist-info/licenses/LICENSE"):
            assert path in names

    def test_it_ships_no_c_sources(self, wheel):
        assert [name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".c")] == []


class TestTheInstalledPackage:
    def test_it_runs_from_the_venv_not_from_the_tree(self, venv, tmp_path):
        done = run([venv / "bin" / "python", "-c", "import kassa.server.cli as m; print(m.__file__)"],
                   COMMAND_TIMEOUT_S, cwd=tmp_path, env=installed_environ())
        assert Path(done.stdout.strip()).is_relative_to(venv)

    def test_kassa_version_prints_the_version_of_pyproject(self, venv, tmp_path):
        done = run([venv / "bin" / "kassa", "--version"], COMMAND_TIMEOUT_S, cwd=tmp_path, env=installed_environ())
        assert done.stdout.strip() == f"kassa {VERSION}"

    def test_serve_without_a_config_says_how_to_get_one(self, venv, tmp_path):
        done = subprocess.run([venv / "bin" / "kassa", "serve"], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, cwd=tmp_path, env=installed_environ())
        assert done.returncode == 2
        assert "kassa init" in done.stderr

    def test_the_sample_program_passes_rules_check(self, venv, tmp_path):
        run([venv / "bin" / "kassa", "init", tmp_path], COMMAND_TIMEOUT_S, cwd=tmp_path, env=installed_environ())
        done = run([venv / "bin" / "kassa", "rules", "check", "config/rules"], COMMAND_TIMEOUT_S,
                   cwd=tmp_path, env=installed_environ())
        assert done.stdout.startswith("ok: ")

    def test_it_serves_health_and_stops_on_sigterm(self, venv, tmp_path):
        run([venv / "bin" / "kassa", "init", tmp_path], COMMAND_TIMEOUT_S, cwd=tmp_path, env=installed_environ())
        environ = installed_environ(KASSA_SERVER_LISTEN="127.0.0.1:0", KASSA_SERVER_WORKERS="1",
                                    KASSA_LEDGER_PATH=str(tmp_path / "ledger"),
                                    KASSA_LEDGER_MAP_SIZE_BYTES=str(LEDGER_MAP_SIZE_BYTES))
        server = subprocess.Popen([venv / "bin" / "kassa", "serve"], cwd=tmp_path, env=environ,
                                  stderr=subprocess.PIPE, text=True)
        try:
            address = serving_address(server)
            with grpc.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            server.send_signal(signal.SIGTERM)
            assert server.wait(SERVE_TIMEOUT_S) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(SERVE_TIMEOUT_S)
            server.stderr.close()


def serving_address(server: subprocess.Popen) -> str:
    log = []
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line:
            break
        log.append(line)
        if '"msg":"serving"' in line:
            return json.loads(line)["address"]
    raise AssertionError(f"the installed kassa did not serve within {SERVE_TIMEOUT_S}s:\n{''.join(log)}")
