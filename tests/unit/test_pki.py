import ssl
import stat
import subprocess

from fleet.pki import FleetPki


def test_certificates_are_made_once_and_kept(tmp_path):
    pki = FleetPki(tmp_path / "tls")
    server = pki.server("servers", ("127.0.0.1", "localhost"))
    client = pki.client("reader")
    made = {p: p.read_bytes() for p in (pki.ca, server.cert, server.key, client.cert, client.key)}
    # A restart asks again: the same CA and certificates, not new ones that every client would have to learn.
    assert FleetPki(tmp_path / "tls").server("servers", ("127.0.0.1",)) == server
    assert {p: p.read_bytes() for p in made} == made
    for key in (server.key, client.key, tmp_path / "tls" / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_server_certificate_names_its_hosts_and_both_sides_verify(tmp_path):
    pki = FleetPki(tmp_path)
    server = pki.server("servers", ("127.0.0.1", "seaweedfs"))
    text = subprocess.run(["openssl", "x509", "-in", server.cert, "-noout", "-text"], capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:seaweedfs" in text
    assert "TLS Web Server Authentication" in text
    for leaf in (server.cert, pki.client("api").cert):
        verified = subprocess.run(["openssl", "verify", "-CAfile", pki.ca, leaf], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.files("api").cert, pki.files("api").key)  # a key that matches its certificate


def test_a_relative_folder_works(tmp_path, monkeypatch):
    # openssl runs in a scratch folder: a relative path (make secrets' default `secrets/`) must still name the CA.
    monkeypatch.chdir(tmp_path)
    files = FleetPki("secrets/tls").client("reader")
    assert files.cert.is_absolute() and files.cert.is_file() and (tmp_path / "secrets" / "tls" / "ca.pem").is_file()
