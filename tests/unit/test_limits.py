"""Each limit and unit of the core is defined once, in core_ext/limits.py (issue 17)."""

import re
from pathlib import Path

from kassa.core_ext import limits

REPO = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("core_ext", "server", "bench")
SOURCE_SUFFIXES = (".py", ".pyx", ".pxi", ".pxd")


def defined_names(text):
    """Upper-case names given a value at module level: `NAME = ...`, `DEF NAME = ...`, `cdef T NAME = ...`."""
    pattern = r"^(?:DEF |cdef [a-z0-9_]+ )?([A-Z][A-Z0-9_]+)\s*(?::[^=\n]*)?=\s*(.*)$"
    return {match[1]: match[2] for match in re.finditer(pattern, text, re.MULTILINE)}


class TestDefinedOnce:
    def test_no_other_module_gives_a_limit_its_own_value(self):
        names = {name for name in vars(limits) if name.isupper()}
        mirrored = []
        for folder in SOURCE_FOLDERS:
            for path in sorted((REPO / folder).rglob("*")):
                if path.suffix not in SOURCE_SUFFIXES or path.name == "limits.py":
                    continue
                for name, value in defined_names(path.read_text()).items():
                    # Reading the value from the limits module (`cdef int64_t X = limits.X`) is allowed.
                    if name in names and not value.startswith("limits."):
                        mirrored.append(f"{path.relative_to(REPO)}: {name} = {value}")
        assert mirrored == []

    def test_the_units_are_in_the_limits_module(self):
        assert limits.BPS_PER_UNIT == 10_000
        assert limits.MS_PER_DAY == 86_400_000

    def test_the_core_modules_use_the_one_value(self):
        from kassa.core_ext import program, promo

        assert program.BPS_PER_UNIT is limits.BPS_PER_UNIT
        assert promo.BPS_PER_UNIT is limits.BPS_PER_UNIT
        assert program.CAMPAIGNS_PER_PROGRAM_MAX is limits.CAMPAIGNS_PER_PROGRAM_MAX
