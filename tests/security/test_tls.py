"""TLS and mutual TLS on the gRPC port, with certificates made by openssl for the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kassa.v1 import accounts_pb2, accounts_pb2_grpc
from tests.server.helpers import by_account

CALL_TIMEOUT_S = 10
OPENSSL_CONFIG = """
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
"""


def openssl(workdir: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True, timeout=60,
                   env={"OPENSSL_CONF": str(workdir / "openssl.cnf"), "PATH": "/usr/bin:/bin:/usr/local/bin"})


def make_ca(workdir: Path, name: str) -> None:
    openssl(workdir, "req", "-x509", "-config", "openssl.cnf", "-extensions", "ca", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN={name}")


def make_leaf(workdir: Path, name: str, ca: str, extensions: str, serial: int) -> None:
    openssl(workdir, "req", "-new", "-config", "openssl.cnf", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
    openssl(workdir, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-set_serial", str(serial), "-days", "2", "-out", f"{name}.pem",
            "-extfile", "openssl.cnf", "-extensions", extensions)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca -> server (IP:127.0.0.1) and client; a second, unrelated CA -> rogue-client."""
    workdir = tmp_path_factory.mktemp("pki")
    (workdir / "openssl.cnf").write_text(OPENSSL_CONFIG)
    make_ca(workdir, "ca")
    make_leaf(workdir, "server", "ca", "server", serial=1)
    make_leaf(workdir, "client", "ca", "client", serial=2)
    make_ca(workdir, "rogue-ca")
    make_leaf(workdir, "rogue-client", "rogue-ca", "client", serial=1)
    return workdir


def tls_config(pki: Path, mutual: bool = False) -> str:
    text = f'[tls]\ncert_file = "{pki / "server.pem"}"\nkey_file = "{pki / "server.key"}"\n'
    if mutual:
        text += f'client_ca_file = "{pki / "ca.pem"}"\n'
    return text


def credentials(pki: Path, ca: str = "ca", client: str | None = None) -> grpc.ChannelCredentials:
    root = (pki / f"{ca}.pem").read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=(pki / f"{client}.key").read_bytes(),
        certificate_chain=(pki / f"{client}.pem").read_bytes(),
    )


def calls_work(channel: grpc.Channel) -> None:
    accounts = accounts_pb2_grpc.AccountsStub(channel)
    created = accounts.CreateAccount(
        accounts_pb2.CreateAccountRequest(request_id="tls/create", account_id="T-1"), timeout=CALL_TIMEOUT_S)
    assert created.account.account_id == "T-1"
    reply = accounts.GetBalance(accounts_pb2.GetBalanceRequest(customer=by_account("T-1")), timeout=CALL_TIMEOUT_S)
    assert reply.account_id == "T-1"
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S).status == \
        health_pb2.HealthCheckResponse.SERVING


def call_fails(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    return caught.value.code()


class TestTls:
    @pytest.fixture
    def server(self, start_kassa, pki):
        return start_kassa(config_text=tls_config(pki))

    def test_a_client_trusting_the_ca_gets_through(self, server, pki):
        with grpc.secure_channel(server.address, credentials(pki)) as channel:
            calls_work(channel)

    def test_a_plaintext_client_gets_nothing(self, server):
        with grpc.insecure_channel(server.address) as channel:
            assert call_fails(channel) == grpc.StatusCode.UNAVAILABLE

    def test_a_client_trusting_another_ca_refuses_the_server(self, server, pki):
        with grpc.secure_channel(server.address, credentials(pki, ca="rogue-ca")) as channel:
            assert call_fails(channel) == grpc.StatusCode.UNAVAILABLE


class TestMutualTls:
    @pytest.fixture
    def server(self, start_kassa, pki):
        return start_kassa(config_text=tls_config(pki, mutual=True))

    def test_a_client_with_a_certificate_of_the_ca_gets_through(self, server, pki):
        with grpc.secure_channel(server.address, credentials(pki, client="client")) as channel:
            calls_work(channel)

    def test_a_client_without_a_certificate_is_refused(self, server, pki):
        with grpc.secure_channel(server.address, credentials(pki)) as channel:
            assert call_fails(channel) == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(server.address) as channel:
            assert call_fails(channel) == grpc.StatusCode.UNAVAILABLE

    def test_a_client_certificate_of_another_ca_is_refused(self, server, pki):
        with grpc.secure_channel(server.address, credentials(pki, client="rogue-client")) as channel:
            assert call_fails(channel) == grpc.StatusCode.UNAVAILABLE
