"""TLS: a server with a self-signed certificate this test creates; clients verify it with --tls-ca."""
import subprocess

import pytest
from click.testing import CliRunner

from clients.client import MemoryClient
from memsvc.cli import cli
from memsvc.core.errors import FailedPrecondition
from memsvc.server.spawn import spawn_server, stop_server
from memsvc.store import KnowledgeBase, StoreConfig
from tests.conftest import WORDS, small_bank

pytestmark = pytest.mark.slow  # TLS is served by a real `memsvc serve` process


def self_signed(folder, name):
    """A certificate for 127.0.0.1/localhost and its key (openssl CLI; `cryptography` is not installed)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp, "server")
    other_ca, _ = self_signed(tmp, "other")
    data = tmp / "kb"
    with KnowledgeBase(StoreConfig(data_dir=data, create=True)) as kb:
        kb.import_table("stem", small_bank(), WORDS)
    proc, address = spawn_server(data, "--tls-cert", str(cert), "--tls-key", str(key))
    yield address, cert, other_ca
    stop_server(proc)


def test_client_verifies_the_server_certificate(tls_server):
    address, cert, _ = tls_server
    with MemoryClient(address, tls_ca=str(cert)) as c:
        assert c.version == 1
        assert c.lookup("stem", ["Spain", "Paris"]).in_request_order().shape == (2, 3, 8)


def test_plaintext_and_untrusted_clients_are_refused(tls_server):
    address, _, other_ca = tls_server
    for kwargs in [{}, {"tls_ca": str(other_ca)}]:
        with MemoryClient(address, timeout=5, **kwargs) as c, pytest.raises(FailedPrecondition, match="cannot reach"):
            c.log()


def test_cli_talks_tls(tls_server):
    address, cert, _ = tls_server
    result = CliRunner().invoke(cli, ["--tls-ca", str(cert), "tables", "--server", address])
    assert result.exit_code == 0 and "stem" in result.output


def test_serve_needs_both_cert_and_key(tmp_path):
    cert, _ = self_signed(tmp_path, "lonely")
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True)) as kb:
        kb.import_table("stem", small_bank(), WORDS)
    with pytest.raises(RuntimeError, match="did not start"):
        spawn_server(tmp_path / "kb", "--tls-cert", str(cert))
