"""The seed's own .env block, copied as it is, runs a working fleet.

Only `video_source` points at the bundled sample, the seed's fixed port numbers become the test servers', and its
plain schemes become TLS ones (`nats://` `tls://`, `http://` `https://`): Vigil's servers speak TLS only. Nothing
else of the addresses changes: `localhost`, and `volume_url` naming the filer as in the seed. The services read
the block from the file (--env-file), not from the harness's environment, which gives only their credentials.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fleet.run import FleetOptions, run_fleet
from fleet.servers import LocalServers, ServerSet
from shared.contracts import EventState

# The seed's block. Its values for the keys the seed leaves open are the project's defaults, but for
# video_skip_frames, which keeps the run short.
SEED_ENV = """\
video_source=video/vtest.mp4
video_skip_frames=4
reader_type=av
master_url=http://localhost:9333
volume_url=http://localhost:8888
ttl_bucket=5m
nats_host=nats://localhost:4222
topic_stream=frames-stream
redis_host=localhost
redis_port=6379
routing_ttl=10
TMP_PATH=/tmp/vigil
"""
SEED_PORTS = {"master": 9333, "filer": 8888, "nats": 4222, "redis": 6379}


def seed_env_for(servers: ServerSet) -> str:
    """The seed's block with the test servers' port numbers and TLS schemes, and nothing else changed."""
    ports = {
        "master": urlsplit(servers.master_url).port,
        "filer": urlsplit(servers.filer_url).port,
        "nats": urlsplit(servers.nats_url).port,
        "redis": servers.redis_port,
    }
    text = SEED_ENV
    for name, seed_port in SEED_PORTS.items():
        text = re.sub(rf"(?<=[:=]){seed_port}\b", str(ports[name]), text)
    return text.replace("=nats://", "=tls://").replace("=http://", "=https://")


def test_the_seed_block_keeps_its_text_but_the_ports(servers: ServerSet) -> None:
    text = seed_env_for(servers)
    tls_schemes = SEED_ENV.replace("=nats://", "=tls://").replace("=http://", "=https://")
    assert re.sub(r"\d{4,5}", "P", text) == re.sub(r"\d{4,5}", "P", tls_schemes)
    assert f"volume_url=https://localhost:{urlsplit(servers.filer_url).port}\n" in text  # the filer, as in the seed


@pytest.mark.timeout(400)
def test_the_seed_env_block_gives_a_working_fleet(local_servers: LocalServers, tmp_path: Path) -> None:
    servers = local_servers.servers
    env_file = tmp_path / "seed.env"
    env_file.write_text(seed_env_for(servers))
    options = FleetOptions(
        tmp_path / "run",
        detection=1,
        classification=1,
        # A prefix of its own, as every test has: the servers are shared with the rest of the suite.
        settings={"subject_prefix": f"t{secrets.token_hex(4)}"},
        env_file=env_file,
        server_addresses=False,
    )
    report = asyncio.run(run_fleet(local_servers, options, asyncio.Event()))

    assert report.code == 0
    drained = report.drained["cam0"]
    assert drained.frames_routed > 0
    assert all(n > 0 for n in drained.tasks.values()) and drained.results == drained.tasks  # every frame answered
    # With the seed's volume_url (the filer) the workers must still fetch every frame from the volume server the
    # master assigned: an error result is what a refused download gives.
    assert report.error_results == {}
    assert report.events, "no event from the sample video's people"
    # Their proofs went to the filer the seed names as volume_url (filer_url is not in the block).
    assert all(event.state is EventState.FINISHED and event.video_proof_path for event in report.events), report.events
