"""The Compose fleet's secrets, made once under secrets/ (git-ignored): `make secrets`, which `make up` runs first.

    .venv/bin/python -m scripts.compose_secrets [--dir secrets] [--env-file .env]

Each password, key and the api token is random and made the first time only; later runs keep them. So is the
fleet's own CA under secrets/tls/ (fleet/pki.py, as the local fleet makes it), with one server certificate that
nats-server, Redis and SeaweedFS share and one client certificate per user: every server speaks TLS only and asks
each client for a certificate from that CA. What is derived is rendered again on every run (so a new role or model
is picked up): nats-server's configuration (`authorization` and `tls` blocks) and Redis's ACL file, by the same
renderers the local fleet uses (shared/access.py, fleet/pki.py), and SeaweedFS's security.toml. The server
certificate is made again, by the same CA, when the names it must carry change (VIGIL_HUB_IP, the hub's address).
docker-compose.yml hands each container only the files its role needs (docs/security.md#docker-compose).

Modes: the folder is 0700, so no other account of the host reads into it. Compose mounts a secret file as it is,
with the host's owner and mode (its `uid`/`mode` options are for Swarm only), and the containers run as users that
do not own the files: so a file a container reads is 0644 inside that closed folder, and the rest (the CA's key, the
admin's logins and certificate key, for an operator's tools) 0600.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from fleet.pki import FleetPki, TlsFiles, nats_tls_config, weed_tls_config
from fleet.run import worker_models
from fleet.servers import ROUTE_USER, SERVER_CERT, generated_secret, nats_cluster_config, write_whole
from shared.access import ADMIN, ADMIN_ACCESS, Access, Role, fleet_access, nats_authorization, redis_acl
from shared.settings import VigilSettings

ROOT = Path(__file__).resolve().parents[1]
MOUNTED = 0o644  # read by a container's user, which is not the file's owner
PRIVATE = 0o600
# Redis's health check logs in as this user, which may only PING: the redis container holds its password.
HEALTH = "health"
HEALTH_ACCESS = Access(nats_publish=(), nats_subscribe=(), redis_rules=("resetchannels", "-@all", "+ping"))
# SeaweedFS's four JWT keys: file name -> security.toml section. The master signs each assign with the storage
# signing key (the uploader sends it back), so only the readers of volumes and the filer's clients hold keys.
JWT_KEYS = {
    "storage-signing.key": "jwt.signing",
    "storage-read.key": "jwt.signing.read",
    "filer-signing.key": "jwt.filer_signing",
    "filer-read.key": "jwt.filer_signing.read",
}
# How long the tokens weed signs itself last: the master's upload token covers a batch of fids (fleet/servers.py).
JWT_EXPIRY_S = 60
API_TOKEN = "api-token"
# The key the notifier signs webhooks with (X-Vigil-Signature): the receivers are given a copy of it.
WEBHOOK_KEY = "webhook-signing.key"
TLS_DIR = "tls"
# Where every container finds its TLS files (docker-compose.yml's `secrets:` targets): the CA, and its own
# certificate and key (a server's, or its role user's client certificate).
IN_CONTAINER = TlsFiles(ca=Path("/run/secrets/ca.pem"), cert=Path("/run/secrets/tls.pem"), key=Path("/run/secrets/tls.key"))
# The names the servers are reached by: their service names inside the fleet (and on worker machines, which map
# them to the hub), and loopback for the health checks inside their containers. VIGIL_HUB_IP is added when set.
# The cluster override (docker-compose.cluster.yml) adds the NATS nodes, which check each other's certificate on
# their routes, and the volume servers.
SERVER_HOSTS = ("nats", "redis", "seaweedfs", "localhost", "127.0.0.1")
NATS_NODES = ("nats-1", "nats-2", "nats-3")
# weed-volume-3 runs on the third host only (docker-compose.host-c.yml).
VOLUME_SERVERS = ("weed-volume-1", "weed-volume-2", "weed-volume-3")
NATS_CLIENT_PORT = 4222
NATS_ROUTE_PORT = 6222
# Beside the server certificate: the names it was made for, so that a changed hub address makes a new one.
SERVER_HOSTS_FILE = f"{SERVER_CERT}.hosts"


@dataclass(frozen=True)
class Made:
    created: list[str]
    rendered: list[str]


def password_file(folder: Path, server: str, user: str) -> Path:
    return folder / f"{server}-{user}.password"


def compose_users(settings: VigilSettings) -> dict[str, Access]:
    """Every login of the Compose fleet: the roles' users (shared/access.py) and the admin, an operator's."""
    tasks = dict(worker_models().values())
    return fleet_access(settings, tasks) | {ADMIN: ADMIN_ACCESS}


def security_toml(folder: Path) -> str:
    lines = [
        "# SeaweedFS's JWT keys, rendered by scripts/compose_secrets.py from the key files beside it, and its TLS:",
        "# HTTPS and gRPC only, each asking for a client certificate from the fleet's CA.",
    ]
    for name, section in JWT_KEYS.items():
        key = (folder / name).read_text()
        lines += ["", f"[{section}]", f'key = "{key}"', f"expires_after_seconds = {JWT_EXPIRY_S}"]
    return "\n".join(lines) + "\n\n" + weed_tls_config(IN_CONTAINER)


def tls_file(user: str, suffix: str) -> str:
    """A certificate (`pem`) or key (`key`) of `user`'s, relative to the secrets folder."""
    return f"{TLS_DIR}/{user}.{suffix}"


def make_pki(folder: Path, users: list[str], hub_ip: str, created: list[str]) -> None:
    """The CA, the servers' certificate (for SERVER_HOSTS and `hub_ip`) and a client certificate per user; kept
    once made, except the servers' when the names it must carry change (the CA stays, so every client still
    trusts the new one)."""
    pki = FleetPki(folder / TLS_DIR)
    before = {p.name for p in pki.folder.glob("*")} if pki.folder.is_dir() else set()
    pki.ensure_ca()
    hosts = "\n".join([*SERVER_HOSTS, *NATS_NODES, *VOLUME_SERVERS, *([hub_ip] if hub_ip else [])]) + "\n"
    recorded = pki.folder / SERVER_HOSTS_FILE
    if not recorded.is_file() or recorded.read_text() != hosts:
        server = pki.files(SERVER_CERT)
        server.cert.unlink(missing_ok=True)
        server.key.unlink(missing_ok=True)
        before -= {server.cert.name, server.key.name}
    pki.server(SERVER_CERT, hosts.split())
    write_whole(recorded, hosts, MOUNTED)
    for user in users:
        pki.client(user)
    # fleet/pki.py writes keys 0600; a container's user does not own them (see the module's docstring).
    for user in [SERVER_CERT, *users]:
        os.chmod(pki.files(user).key, PRIVATE if user == ADMIN else MOUNTED)
    created += [f"{TLS_DIR}/{p.name}" for p in sorted(pki.folder.glob("*")) if p.name not in before and p.suffix != ".hosts"]


def _secret(folder: Path, name: str, mode: int, made: list[str]) -> str:
    path = folder / name
    existed = path.exists()
    value = generated_secret(path, mode)
    os.chmod(path, mode)
    if not existed:
        made.append(name)
    return value


def make_secrets(folder: Path, settings: VigilSettings, env_token: str = "", hub_ip: str = "") -> Made:
    """Create what is missing under `folder` and render the servers' files; return what was created and rendered."""
    if settings.subject_prefix:
        raise SystemExit(
            f"subject_prefix is {settings.subject_prefix!r} in the settings file: the Compose fleet's services log in as "
            "the unprefixed role users (reader, router, ...) that docker-compose.yml names. Remove subject_prefix."
        )
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    created: list[str] = []
    users = compose_users(settings)
    mode = {ADMIN: PRIVATE}
    triples: dict[str, list[tuple[str, str, Access]]] = {"nats": [], "redis": []}
    for server in triples:
        for user, access in users.items():
            name = password_file(folder, server, user).name
            triples[server].append((user, _secret(folder, name, mode.get(user, MOUNTED), created), access))
    health = _secret(folder, password_file(folder, "redis", HEALTH).name, MOUNTED, created)
    triples["redis"].append((HEALTH, health, HEALTH_ACCESS))
    for name in [*JWT_KEYS, WEBHOOK_KEY]:
        _secret(folder, name, MOUNTED, created)
    token_path = folder / API_TOKEN
    if env_token and not token_path.exists():
        write_whole(token_path, env_token, MOUNTED)
        created.append(f"{API_TOKEN} (the api_token of the settings file)")
    _secret(folder, API_TOKEN, MOUNTED, created)
    make_pki(folder, list(users), hub_ip, created)
    rendered = {
        "nats.conf": nats_authorization(triples["nats"]) + nats_tls_config(IN_CONTAINER),
        "redis.acl": redis_acl(triples["redis"]),
        "seaweedfs-security.toml": security_toml(folder),
    }
    # The cluster override's nodes: each its own configuration, the same users plus its `cluster` block.
    route_password = _secret(folder, password_file(folder, "nats", ROUTE_USER).name, MOUNTED, created)
    for node in NATS_NODES:
        peers = [f"{peer}:{NATS_ROUTE_PORT}" for peer in NATS_NODES if peer != node]
        # Each node is advertised by its name, not the container address it listens on: on three hosts
        # (docker-compose.host-*.yml) the other hosts and their clients reach a node only by its name.
        cluster = nats_cluster_config(
            node,
            f"0.0.0.0:{NATS_ROUTE_PORT}",
            peers,
            route_password,
            IN_CONTAINER,
            client_advertise=f"{node}:{NATS_CLIENT_PORT}",
            route_advertise=f"{node}:{NATS_ROUTE_PORT}",
        )
        rendered[f"{node}.conf"] = rendered["nats.conf"] + cluster
    for name, text in rendered.items():
        write_whole(folder / name, text, MOUNTED)
    return Made(created=created, rendered=list(rendered))


def worker_machine_files(users: dict[str, Access]) -> list[str]:
    """What a worker machine holds: each worker role's NATS and Redis passwords and client certificate, the
    storage read key, and the CA the hub's servers are checked against (paths relative to the secrets folder)."""
    workers = [u for u in users if u.startswith(f"{Role.WORKER.value}-")]
    passwords = [f"{server}-{user}.password" for user in workers for server in ("nats", "redis")]
    certificates = [tls_file(user, suffix) for user in workers for suffix in ("pem", "key")]
    return [*passwords, *certificates, "storage-read.key", f"{TLS_DIR}/ca.pem"]


def _compose_values() -> dict[str, str]:
    """What docker compose interpolates with: the project's .env, overridden by the environment."""
    found = dotenv_values(".env") if Path(".env").is_file() else {}
    return {k: v for k, v in found.items() if v is not None} | dict(os.environ)


def main(argv: list[str] | None = None) -> int:
    compose = _compose_values()
    parser = argparse.ArgumentParser(prog="python -m scripts.compose_secrets", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(compose.get("VIGIL_SECRETS_DIR") or "secrets"),
        help="where the secrets live (default: VIGIL_SECRETS_DIR, else secrets/)",
    )
    parser.add_argument("--env-file", default=compose.get("VIGIL_ENV_FILE") or ".env", help="the fleet's settings file")
    args = parser.parse_args(argv)
    env_file = Path(args.env_file)
    if not env_file.is_file():
        print(f"settings file {env_file} not found: cp .env.example {env_file} (make up does it)", file=sys.stderr)
        return 2
    # Only the keys that decide the users are read: the file is the services' (other keys are theirs to check).
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    settings = VigilSettings(_env_file=None, subject_prefix=values.get("subject_prefix", ""))  # type: ignore[call-arg]
    if "docker-compose.workers.yml" in compose.get("COMPOSE_FILE", ""):
        # A worker machine logs in as the hub's users: its secrets are copies of the hub's, never new ones.
        missing = [name for name in worker_machine_files(compose_users(settings)) if not (args.dir / name).is_file()]
        if missing:
            print(
                f"this is a worker machine (COMPOSE_FILE names docker-compose.workers.yml): copy these from the first "
                f"host's secrets folder into {args.dir}/ (docs/multi-machine.md): {', '.join(missing)}",
                file=sys.stderr,
            )
            return 1
        return 0
    env_token = values.get("api_token", "")
    made = make_secrets(args.dir, settings, env_token, hub_ip=compose.get("VIGIL_HUB_IP", ""))
    if made.created:
        print(f"{args.dir}: made {', '.join(made.created)}")
    if env_token:
        # The api would get the token twice (and refuse both): it moves to the secrets folder, out of .env.
        print(
            f"api_token is set in {env_file}: the api now reads it from {args.dir / API_TOKEN}. Delete the api_token "
            f"line from {env_file} (nothing secret belongs there; every container reads that file), then run make up again.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
