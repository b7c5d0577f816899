"""The code blocks of docs/ that can run, run as written (paths and addresses swapped for the test's),
and the refusals docs/configuration.md shows are the ones kassa prints.

Not run here, and why: the README's tour has its own test (tests/server/test_readme_tour.py); the
grpcurl calls in docs/api.md need grpcurl, which is not installed (their JSON bodies are decoded and
sent from Python instead, TestGrpcurlBodies); the Python fragments (the API key
metadata, the TLS channel) are pieces of a client, run in substance by tests/security; the command
synopses in docs/operations.md and bench/README.md list options rather than run one command; the
locust command in loadtest/README.md runs for 30 s against a server (make loadtest); the install
recipe's `pip install .` needs the package index and a build (tests/packaging/test_wheel.py builds
and installs the wheel; its `kassa init` and `rules check` lines run here) and `kassa serve` would
not end; the systemd recipe needs root and systemd (tests/packaging/test_systemd_unit.py checks the
unit); README.md's install block is the same recipe; the `proto` block in docs/api.md is an excerpt
of proto/kassa/v1/processing.proto; the `kassa verify` violation lines need a ledger with an
unjournaled write-off, which tests/server/test_statements.py builds and checks them on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kassa_harness import REPO

DOCS = REPO / "docs"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    return [body for lang, body in BLOCK.findall(text) if lang == language]


def block_with(path: Path, language: str, text: str) -> str:
    """The one block of that language that holds `text`."""
    found = [body for body in blocks(path, language) if text in body]
    assert len(found) == 1, f"{len(found)} {language} blocks of {path.name} hold {text!r}"
    return found[0]


def kassa_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kassa.server.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


class TestRulesReference:
    def test_the_program_and_tiers_examples_make_a_program_that_checks(self, tmp_path):
        program, tiers = blocks(DOCS / "rules.md", "toml")[:2]
        path = tmp_path / "program.toml"
        path.write_text(program + "\n" + tiers)

        run = kassa_cli("rules", "check", str(path), cwd=REPO)

        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("ok: 1 campaigns (1 purchase, 0 event)")

    def test_the_rules_check_output_is_the_one_the_docs_show(self):
        shown = re.search(r"`kassa rules check config/rules` prints `(ok: [^`]*)`",
                          (DOCS / "operations.md").read_text(encoding="utf-8")).group(1)

        run = kassa_cli("rules", "check", "config/rules", cwd=REPO)

        assert run.returncode == 0, run.stderr
        assert re.fullmatch(re.escape(shown.replace("v-...", "@")).replace("@", r"v-\S+"), run.stdout.strip())


class TestOperations:
    def test_the_key_recipe_makes_a_key_and_its_sha256(self):
        recipe = block_with(DOCS / "operations.md", "sh", "openssl rand")
        script = recipe + 'printf "%s\\n" "$KEY"\n'

        run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)

        assert run.returncode == 0, run.stderr
        digest_line, key = run.stdout.split("\n")[:2]
        assert re.fullmatch(r"[0-9a-f]{64}", key)
        assert re.fullmatch(r"[0-9a-f]{64}  -", digest_line)

    def test_the_auth_example_is_a_config_kassa_accepts(self, tmp_path):
        from kassa.server.config import load_config

        path = tmp_path / "kassa.toml"
        path.write_text(block_with(DOCS / "operations.md", "toml", "[[auth.keys]]"))

        config = load_config(str(path))

        assert config.auth.enabled
        assert [(key.name, key.stores, key.admin) for key in config.auth.keys] == \
            [("store-7/pos-2", ["store-7"], False), ("ops/alice", [], True)]

    def test_backup_and_verify_as_written(self, kassa, tmp_path):
        recipe = block_with(DOCS / "operations.md", "sh", "kassa backup /srv/backup")
        backup_dir = tmp_path / "kassa-backup"
        script = recipe.replace("/srv/backup/kassa-2026-11-25", str(backup_dir)) \
                       .replace(".venv/bin/kassa", f"{sys.executable} -m kassa.server.cli")
        environment = dict(kassa.environ, PYTHONPATH=str(REPO))

        run = subprocess.run(["bash", "-e", "-c", script], cwd=REPO, env=environment,
                             capture_output=True, text=True, timeout=120)

        assert run.returncode == 0, run.stderr
        backup_line, verify_line = run.stdout.strip().splitlines()[-2:]
        assert json.loads(backup_line)["ok"] is True
        assert json.loads(verify_line)["ok"] is True


@pytest.mark.parametrize("path", sorted([*DOCS.glob("*.md"), REPO / "README.md", REPO / "bench" / "README.md",
                                         REPO / "loadtest" / "README.md"]), ids=lambda p: p.name)
def test_relative_links_lead_to_files_that_exist(path):
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


class TestGrpcurlBodies:
    """grpcurl is not installed here: each call's JSON body is decoded with the proto3 JSON mapping
    grpcurl uses and sent, in the order docs/api.md lists them, to a real server; every one answers OK."""

    CALL = re.compile(r"grpcurl -plaintext(?: -d '(?P<body>[^']*)')?\s+\S+\s+(?P<method>kassa\.v1\.\w+/\w+)")

    def calls(self) -> list[tuple[str, str]]:
        text = (DOCS / "api.md").read_text(encoding="utf-8")
        section = text[text.index("## Calling kassa with grpcurl"):]
        script = blocks_of(section, "sh")[0].replace("\\\n", " ")
        return [(found["method"], found["body"] or "{}") for found in self.CALL.finditer(script)]

    def test_every_body_is_its_methods_request_and_is_answered_ok(self, kassa):
        import grpc
        from google.protobuf import descriptor_pool, json_format, message_factory

        from kassa.v1 import accounts_pb2, processing_pb2  # noqa: F401  (register the services in the pool)

        calls = self.calls()
        assert "kassa.v1.Processing/ProcessEvent" in [method for method, _ in calls]
        pool = descriptor_pool.Default()
        channel = grpc.insecure_channel(kassa.address)
        for method, body in calls:
            service_name, method_name = method.split("/")
            descriptor = pool.FindServiceByName(service_name).FindMethodByName(method_name)
            request_class = message_factory.GetMessageClass(descriptor.input_type)
            response_class = message_factory.GetMessageClass(descriptor.output_type)
            request = json_format.Parse(body, request_class())
            call = channel.unary_unary(f"/{method}", request_serializer=request_class.SerializeToString,
                                       response_deserializer=response_class.FromString)

            call(request, timeout=10)  # raises grpc.RpcError unless the server answers OK
        channel.close()


def blocks_of(text: str, language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(text) if lang == language]


class TestConfigurationRefusals:
    """Each refusal line docs/configuration.md shows is what `kassa verify` (which reads the config
    first, as every command does) prints for the mistake beside it here."""

    MISTAKES = [  # (a replacement in the sample config, the environment)
        (("workers = 0", "wrokers = 0"), {}),
        (("grace_s = 10", 'grace_s = "ten"'), {}),
        (None, {"KASSA_LEDGER_SYNC": "ture"}),
        (None, {"KASSA_SERVER_LISTEN": "localhost"}),
        (None, {"KASSA_SERVER_WORKERS": "1000"}),
        (None, {"KASSA_SERVER_WORKRES": "2"}),
    ]

    def test_every_refusal_shown_is_the_one_kassa_prints(self, tmp_path):
        import os

        text = (DOCS / "configuration.md").read_text(encoding="utf-8")
        shown = blocks_of(text, "")[0].strip().splitlines()
        sample = (REPO / "config" / "kassa.toml").read_text(encoding="utf-8")
        printed = []
        for edit, variables in self.MISTAKES:
            (tmp_path / "config").mkdir(exist_ok=True)
            config = sample.replace(*edit) if edit else sample
            assert config != sample or not edit
            (tmp_path / "config" / "kassa.toml").write_text(config)
            environment = {name: value for name, value in os.environ.items() if not name.startswith("KASSA_")}
            environment.update(variables, PYTHONPATH=str(REPO))

            run = kassa_cli("verify", cwd=tmp_path, env=environment)

            assert run.returncode == 2, run.stderr
            printed.append(run.stderr.strip())
        assert printed == shown


class TestInstalling:
    def test_init_and_rules_check_as_written(self, tmp_path):
        recipe = block_with(DOCS / "operations.md", "sh", "kassa init /srv/shop")
        kassa = f"{sys.executable} -m kassa.server.cli"
        # pip install needs the package index (tests/packaging builds and installs the wheel), and
        # serve would not end: the rest runs as written, the checkout's kassa standing in for /opt/kassa's.
        lines = [line.split("#")[0] for line in recipe.splitlines() if "kassa init" in line or "rules check" in line]
        script = "\n".join(lines).replace("/opt/kassa/bin/kassa", kassa).replace("/srv/shop", str(tmp_path / "shop"))
        script = script.replace(f" && {kassa} serve", "")

        run = subprocess.run(["bash", "-e", "-c", script], env=dict(PYTHONPATH=str(REPO), PATH="/usr/bin:/bin"),
                             capture_output=True, text=True, timeout=120)

        assert run.returncode == 0, run.stderr
        assert run.stdout.strip().splitlines()[-1].startswith("ok: 17 campaigns")
        assert (tmp_path / "shop" / "config" / "systemd" / "kassa.service").exists()


class TestRulesSourceLimits:
    """The problem lines of the rules-source limits table are what `kassa rules check` prints."""

    def shown(self) -> dict[str, str]:
        text = (DOCS / "operations.md").read_text(encoding="utf-8")
        rows = re.findall(r"^\| `(RULES_\w+)` \| [^|]+ \| `([^`]+)` \|$", text, re.M)
        return dict(rows)

    @pytest.mark.parametrize("limit, source", [
        ("RULES_SOURCE_BYTES_MAX", "# " + "x" * (1024 * 1024) + "\n"),
        ("RULES_NESTING_DEPTH_MAX", "a = " + "[" * 33 + "]" * 33 + "\n"),
        ("RULES_KEY_PARTS_MAX", "a" + ".a" * 32 + " = 1\n"),
    ])
    def test_the_line_shown_is_the_line_printed(self, tmp_path, limit, source):
        path = tmp_path / "program.toml"
        path.write_text(source)
        expected = self.shown()[limit].replace("FILE", str(path)).replace("line N", "line 1")
        expected = expected.replace("N bytes", f"{len(source.encode())} bytes")

        run = kassa_cli("rules", "check", str(path), cwd=REPO)

        assert run.returncode == 1
        assert expected in run.stderr.splitlines()


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = BLOCK.sub("", path.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("path", sorted([*DOCS.glob("*.md"), REPO / "README.md", REPO / "bench" / "README.md",
                                         REPO / "loadtest" / "README.md"]), ids=lambda p: p.name)
def test_links_to_a_heading_lead_to_a_heading_that_exists(path):
    text = path.read_text(encoding="utf-8")
    for target, anchor in re.findall(r"\]\(([^)#:]*)#([^)]+)\)", text):
        linked = (path.parent / target) if target else path
        assert anchor in heading_anchors(linked), f"{path.name} links to {target}#{anchor}, which has no such heading"
