"""The server's converters are the server's: one that only tests call lives in the tests (issue 17)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "server"
MODULES = ("convert.py", "wire.pyx")


def public_functions(text):
    return re.findall(r"^(?:c?p?def) ([a-z][a-z0-9_]*)\(", text, re.MULTILINE)


def uses(name, text):
    return len(re.findall(rf"\b{name}\b", text))


def uses_from(stem, name, text):
    """Calls of `stem.name` and imports of `name` from the module `stem`."""
    imported = re.findall(rf"from kassa\.server\.{stem} import (\([^)]*\)|[^\n]*)", text)
    return uses(f"{stem}.{name}", text) + sum(uses(name, names) for names in imported)


class TestOnlyServerCode:
    def test_every_public_converter_is_called_by_the_server(self):
        sources = {
            path: path.read_text() for path in SERVER.rglob("*") if path.suffix in (".py", ".pyx")
        }
        unused = []
        for module in MODULES:
            own = sources[SERVER / module]
            for name in public_functions(own):
                stem = module.split(".")[0]
                elsewhere = sum(uses_from(stem, name, text) for path, text in sources.items() if path.name != module)
                # Its own `def` is one use; a second is a caller in the same module.
                if elsewhere == 0 and uses(name, own) < 2:
                    unused.append(f"{module}: {name}")
        assert unused == []
