"""A fleet's own certificate authority, and the server and client certificates it signs.

The servers (nats-server, redis-server, SeaweedFS) prove who they are with a server certificate, and check
that each client holds a client certificate from the same CA: SeaweedFS's master has no passwords, so a client
certificate is what stands between the network and `/dir/assign`. Both the local fleet (LocalServers) and
`make secrets` for Compose make them here, with the `openssl` command: it is on every machine that runs
Docker, and it keeps a cryptography library out of the dependencies.

Files are made once and kept: a restart must not change the CA that every certificate was issued by. Keys
are written with mode 0600, certificates (public) with 0644.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 3650
# 825 days: the longest validity that Apple's and browsers' TLS clients still accept for a leaf.
LEAF_DAYS = 825
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


class PkiError(RuntimeError):
    """openssl is missing or refused to make a certificate."""


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS endpoint needs: the CA to check its peer against, and its own certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise PkiError("the `openssl` command is not installed; install it (apt-get install openssl) to make certificates")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def _subject_alt_names(hosts: Sequence[str]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.append(f"DNS:{host}")
        else:
            names.append(f"IP:{host}")
    return ",".join(names)


class FleetPki:
    """The CA and certificates in one folder: `ca.pem`/`ca.key`, `<name>.pem`/`<name>.key`."""

    def __init__(self, folder: Path) -> None:
        # Absolute: openssl runs in a scratch folder, where a relative path would name nothing.
        self.folder = Path(folder).resolve()

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(ca=self.ca, cert=self.folder / f"{name}.pem", key=self.folder / f"{name}.key")

    def ensure_ca(self) -> Path:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.ca.is_file():
            with tempfile.TemporaryDirectory(dir=self.folder) as work:
                w = Path(work)
                _openssl("req", "-x509", *_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(CA_DAYS),
                         "-subj", "/CN=Vigil fleet CA", "-addext", "basicConstraints=critical,CA:TRUE",
                         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=w)  # fmt: skip
                self._install(w / "ca.key", self.folder / "ca.key", 0o600)
                self._install(w / "ca.pem", self.ca, 0o644)
        return self.ca

    def server(self, name: str, hosts: Sequence[str]) -> TlsFiles:
        """A certificate for a server reached as any of `hosts` (names or addresses). It also serves as a
        client certificate, because SeaweedFS's parts call each other with the certificate they serve with."""
        return self._leaf(name, "serverAuth,clientAuth", hosts)

    def client(self, name: str) -> TlsFiles:
        """A client certificate; its common name says which role holds it."""
        return self._leaf(name, "clientAuth", ())

    def _leaf(self, name: str, usage: str, hosts: Sequence[str]) -> TlsFiles:
        self.ensure_ca()
        files = self.files(name)
        if files.cert.is_file() and files.key.is_file():
            return files
        extensions = [f"extendedKeyUsage={usage}", "basicConstraints=critical,CA:FALSE"]
        if hosts:
            extensions.append(f"subjectAltName={_subject_alt_names(hosts)}")
        with tempfile.TemporaryDirectory(dir=self.folder) as work:
            w = Path(work)
            (w / "ext").write_text("\n".join(extensions) + "\n")
            _openssl("req", *_KEY, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={name}", cwd=w)
            _openssl("x509", "-req", "-in", "leaf.csr", "-CA", str(self.ca), "-CAkey", str(self.folder / "ca.key"),
                     "-CAcreateserial", "-CAserial", "serial", "-out", "leaf.pem", "-days", str(LEAF_DAYS),
                     "-extfile", "ext", cwd=w)  # fmt: skip
            self._install(w / "leaf.key", files.key, 0o600)
            self._install(w / "leaf.pem", files.cert, 0o644)
        return files

    @staticmethod
    def _install(made: Path, path: Path, mode: int) -> None:
        # Renamed into place whole: a server starting meanwhile never reads half a file.
        os.chmod(made, mode)
        made.replace(path)


# The servers' TLS settings, for LocalServers and for Compose (where the files are secrets in /run/secrets).


def nats_tls_config(tls: TlsFiles) -> str:
    # In the configuration file, not on the command line: a reload (add_users) would drop command-line TLS.
    # verify: a client must show a certificate from the fleet's CA as well as its password.
    return f'\ntls {{\n  cert_file: "{tls.cert}"\n  key_file: "{tls.key}"\n  ca_file: "{tls.ca}"\n  verify: true\n}}\n'


def redis_tls_args(tls: TlsFiles, port: int) -> list[str]:
    # The TLS port replaces the plain one, which is closed (0); tls-auth-clients is on by default.
    tls_files = ["--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca)]
    return ["--port", "0", "--tls-port", str(port), *tls_files]


def weed_tls_config(tls: TlsFiles) -> str:
    """weed's security.toml: master, volume server and filer serve HTTPS only and ask for a client certificate
    (the master has no other way to tell the fleet from anyone); weed's parts call each other with the server's."""
    files = f'cert = "{tls.cert}"\nkey = "{tls.key}"\nca = "{tls.ca}"\n'
    servers = [f"[https.{part}]\n{files}" for part in ("master", "volume", "filer")]
    # gRPC too: the filer's would let anyone read and write files, the master's assign, with no token at all.
    pair = f'cert = "{tls.cert}"\nkey = "{tls.key}"\n'
    grpc = [f'[grpc]\nca = "{tls.ca}"\n', *(f"[grpc.{part}]\n{pair}" for part in ("master", "volume", "filer", "client"))]
    return "\n".join([*servers, f"[https.client]\nenabled = true\n{files}", *grpc])
