"""Which kassa this is: the version pyproject.toml gives, read where it can be found.

Run from a source tree (make run, the tests), the tree's own pyproject.toml says it, so a checkout
never reports the version of whatever kassa was installed last; installed from a wheel, the package
metadata that pip wrote from the same field says it."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "kassa"
SOURCE_TREE = Path(__file__).resolve().parent.parent  # the repository root when run from a checkout
UNKNOWN = "unknown"  # neither a source tree nor installed metadata: say so instead of guessing


def package_version() -> str:
    try:
        project = tomllib.loads((SOURCE_TREE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        project = {}
    if project.get("name") == DISTRIBUTION and "version" in project:
        return project["version"]
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN
