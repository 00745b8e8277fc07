"""`docker compose up` for real: the repository's compose fleet on a Docker engine, as a user runs it.

The scenarios share one fleet and run in order, each on its own source id, so each asserts only its own
events and totals. Everything is checked through the api and `docker compose ps`/`inspect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import av
import nats
import nats.errors
import pytest
import redis
import redis.exceptions

from shared.settings import VigilSettings
from shared.subjects import Subjects
from tests.deploy.fleet import ComposeFleet, wait_until
from tests.support.media import truncated_copy

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1500)]

DETECTOR = "ssd_mobilenet_v2_coco"
CLASSIFIER = "efficientnet_lite0"
MODELS = {DETECTOR, CLASSIFIER}
SAMPLE_FRAMES = 795  # video/vtest.mp4
OTHER_FRAMES = 100
INFRA = ("nats", "redis", "seaweedfs")
LONG_RUNNING = (*INFRA, "router", "detection", "classification", "registrator", "api")
RESULTS = Subjects.from_settings(VigilSettings(_env_file=None)).results("cam0")  # type: ignore[call-arg]
MEDIA_OVERRIDE = """services:
  reader:
    volumes:
      - ./media:/app/media:ro
"""


# ---------------------------------------------------------------- helpers


def drained(fleet: ComposeFleet, source: str, frames: int | None = None) -> dict[str, Any] | None:
    """The source's totals once it has ended and every routed task is answered, else None."""
    totals = fleet.totals(source)
    health = {s["source_id"]: s for s in fleet.get("/api/v1/sources")["sources"]}.get(source)
    if not totals or not health or health["state"] not in ("ended", "failed"):
        return None
    if frames is not None and totals["frames_read"] != frames:
        return None
    models = totals["models"]
    if set(models) != MODELS or totals["frames_routed"] != totals["frames_published"]:
        return None
    if any(m["routed"] != totals["frames_routed"] or m["inferred"] + m["errors"] != m["routed"] for m in models.values()):
        return None
    events = fleet.events(source)
    if not events or any(e["state"] not in ("FINISHED", "ERROR") for e in events):
        return None
    return totals


def healthy(fleet: ComposeFleet, services: tuple[str, ...]) -> bool:
    states = fleet.states()
    return all(
        states.get(name) and all(row["State"] == "running" and row.get("Health") == "healthy" for row in states[name])
        for name in services
    )


def assert_read_equals_inferred(totals: dict[str, Any], frames: int) -> None:
    assert totals["frames_read"] == totals["frames_published"] == frames, totals
    for model, counts in totals["models"].items():
        assert counts["routed"] == counts["inferred"] == frames and counts["errors"] == 0, (model, counts)


def decoded_clip(fleet: ComposeFleet, event: dict[str, Any]) -> tuple[float, int, str]:
    """(frame rate, frames decoded, sha256) of the event's clip, fetched through the api."""
    status, kind, body = fleet.get_bytes(event["links"]["clip"])
    assert status == 200 and kind == "video/mp4"
    with tempfile.NamedTemporaryFile(suffix=".mp4") as clip:
        clip.write(body)
        clip.flush()
        with av.open(clip.name) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 0)
            frames = sum(1 for _ in container.decode(stream))
    return rate, frames, hashlib.sha256(body).hexdigest()


def make_other_video(sample: Path, path: Path, frames: int) -> None:
    """The sample's first frames as a new H.264 file: another camera's recording."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(sample)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 768, 576, "yuv420p"
        for index, frame in enumerate(src.decode(video=0)):
            if index == frames:
                break
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def follow(fleet: ComposeFleet, argv: list[str], until: str, timeout: float) -> str:
    """Run a command that never ends by itself (`make logs`) until its output shows `until`; then stop it."""
    with tempfile.TemporaryFile() as sink:
        proc = subprocess.Popen(
            argv, cwd=fleet.folder, env=fleet.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                sink.seek(0)
                if until in sink.read().decode(errors="replace"):
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        sink.seek(0)
        return sink.read().decode(errors="replace")


# ---------------------------------------------------------------- bad input, before anything runs


def test_an_image_that_cannot_be_built_names_the_fix(project: ComposeFleet) -> None:
    env = project.env | {"VIGIL_PYTHON_IMAGE": "vigil-absent/python:never"}
    done = project.make("up", check=False, env=env, timeout=600)
    assert done.returncode != 0
    assert "Building the Vigil images failed" in done.stderr and "VIGIL_PYTHON_IMAGE" in done.stderr, done.stderr[-2000:]
    assert "vigil-absent/python:never" in done.stderr
    assert project.containers("api", all_states=True) == []  # nothing was started


def test_a_taken_port_names_the_fix(project: ComposeFleet) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", project.api_port))
        squatter.listen()
        done = project.make("up", check=False, timeout=120)
    assert done.returncode != 0
    assert f"Port 127.0.0.1:{project.api_port}" in done.stderr and "VIGIL_API_PORT" in done.stderr, done.stderr
    assert project.states() == {}


# ---------------------------------------------------------------- the scenarios


def test_up_builds_every_image_and_the_sample_drains_into_a_finished_event(project: ComposeFleet) -> None:
    project.write_env(VIGIL_API_PORT=str(project.api_port), source_id="cam0")
    project.timed("build", lambda: project.compose("build", timeout=1500))
    project.timed(
        "up_until_healthy",
        lambda: (
            project.compose("up", "-d"),
            wait_until(lambda: healthy(project, LONG_RUNNING), 240, "every service healthy", describe=project.states),
        ),
    )
    reader = project.states()["reader"][0]
    assert reader["State"] == "running" or reader["ExitCode"] == 0, reader

    totals = project.timed(
        "sample_drained",
        lambda: wait_until(
            lambda: drained(project, "cam0", SAMPLE_FRAMES),
            600,
            "cam0 drained",
            interval=2,
            describe=lambda: project.totals("cam0"),
        ),
    )
    assert_read_equals_inferred(totals, SAMPLE_FRAMES)

    events = project.events("cam0")
    finished = [e for e in events if e["state"] == "FINISHED" and e["label"] == "person"]
    assert finished and len(finished) == len(events), events
    rate, frames, _ = decoded_clip(project, finished[0])
    assert rate == 10 and frames == finished[0]["clip_frames"] > 0


def test_build_settings_reach_pip_and_stay_out_of_the_images(project: ComposeFleet, tmp_path: Path) -> None:
    # The image already built carries no trace of the build secrets.
    image = project.inspect(project.containers("router")[0])["Image"]
    config = project.engine.docker("image", "inspect", image).stdout
    assert "PIP_CONFIG_FILE" not in config and "pip_conf" not in config
    # A site's pip.conf is what pip uses: with an index that does not answer, the build fails naming it.
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://127.0.0.1:9/vigil-site-index/\nretries = 0\ntimeout = 2\n")
    env = project.env | {"VIGIL_PIP_CONF": str(conf)}
    done = subprocess.run(
        ["docker", "compose", "build", "--no-cache", "router"],
        cwd=project.folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0 and "127.0.0.1:9/vigil-site-index" in done.stdout + done.stderr


def address(fleet: ComposeFleet, service: str) -> str:
    """The container's address on the project network, which this host reaches as a LAN machine would a hub."""
    networks = fleet.inspect(fleet.containers(service)[0])["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


def tls_context(fleet: ComposeFleet, user: str | None) -> ssl.SSLContext:
    """A client context that trusts the fleet's CA and shows `user`'s certificate (None: no certificate).

    The host reaches the containers by their addresses on the project network, which the servers' certificate
    does not name (worker machines reach the hub by the names it does): so the chain is checked, not the name."""
    tls = fleet.folder / "secrets" / "tls"
    context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    context.check_hostname = False
    if user is not None:
        context.load_cert_chain(tls / f"{user}.pem", tls / f"{user}.key")
    return context


async def nats_connect(url: str, tls: ssl.SSLContext, **login: Any) -> str:
    """What a connection hears: "connected", or the error that refused it."""
    try:
        client = await nats.connect(url, tls=tls, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0, **login)
    except Exception as exc:  # noqa: BLE001 - a refused handshake surfaces as an ssl, OS or nats error
        return f"{type(exc).__name__}: {exc}"
    await client.close()
    return "connected"


async def nats_refusals(fleet: ComposeFleet, url: str) -> tuple[str, str, str]:
    """(what the reader's login hears without a client certificate, what a certificate without a login hears,
    what the reader hears when it publishes a result)."""
    reader_password = fleet.secret("nats-reader.password")
    uncertified = await nats_connect(url, tls_context(fleet, None), user="reader", password=reader_password)
    anonymous = await nats_connect(url, tls_context(fleet, "reader"))
    errors: list[Exception] = []
    refused = asyncio.Event()

    async def collect(exc: Exception) -> None:
        errors.append(exc)
        refused.set()

    reader = await nats.connect(
        url,
        tls=tls_context(fleet, "reader"),
        user="reader",
        password=reader_password,
        inbox_prefix="_INBOX.reader",
        allow_reconnect=False,
        error_cb=collect,
    )
    try:
        await reader.publish(RESULTS, b"{}")
        await reader.flush(timeout=5)
        with contextlib.suppress(TimeoutError):  # no refusal within 5 s: it was published
            await asyncio.wait_for(refused.wait(), 5)
    finally:
        await reader.close()
    return uncertified, anonymous, str(errors[0]) if errors else "published"


def nats_in_clear(host: str, user: str, password: str) -> tuple[bool, bytes]:
    """(whether nats-server announces that it requires TLS, what it answers a login and PING sent in clear)."""
    with socket.create_connection((host, 4222), timeout=5) as sock:
        reply = sock.makefile("rb")
        info = json.loads(reply.readline().removeprefix(b"INFO "))
        sock.sendall(f"CONNECT {json.dumps({'user': user, 'pass': password, 'verbose': False})}\r\nPING\r\n".encode())
        try:
            answer = reply.readline()
        except OSError as exc:  # closed on us
            answer = str(exc).encode()
    return bool(info.get("tls_required")), answer


def redis_client(fleet: ComposeFleet, host: str, user: str, certificate: str | None) -> redis.Redis:
    """`user`'s Redis login over TLS, showing `certificate`'s client certificate (None: none)."""
    tls = fleet.folder / "secrets" / "tls"
    files = {}
    if certificate is not None:
        files = {"ssl_certfile": str(tls / f"{certificate}.pem"), "ssl_keyfile": str(tls / f"{certificate}.key")}
    password = fleet.secret(f"redis-{user}.password")
    return redis.Redis(
        host=host,
        port=6379,
        username=user,
        password=password,
        socket_timeout=5,
        ssl=True,
        ssl_ca_certs=str(tls / "ca.pem"),
        ssl_check_hostname=False,
        **files,
    )


def test_the_servers_refuse_who_has_no_login(project: ComposeFleet) -> None:
    # The fleet of the first scenario, reached from this host over the project network, as a machine on a
    # hub's LAN reaches its published ports. Every server speaks TLS only and asks for a client certificate
    # from the fleet's CA: a valid password without one is refused, and so is a certificate without a login.
    nats_url = f"tls://{address(project, 'nats')}:4222"
    uncertified, anonymous, forged = asyncio.run(nats_refusals(project, nats_url))
    # Refused with a TLS alert or a reset, whichever comes first; the same login with a certificate gets in.
    assert uncertified != "connected", "NATS let in a client without a certificate"
    assert "Authorization Violation" in anonymous, anonymous
    assert f'permissions violation for publish to "{RESULTS}"' in forged, forged
    required, answer = nats_in_clear(address(project, "nats"), "reader", project.secret("nats-reader.password"))
    assert required and b"PONG" not in answer, answer

    host = address(project, "redis")
    with pytest.raises(redis.ConnectionError):  # no TLS: the plain port is closed
        redis.Redis(host=host, port=6379, username="api", password=project.secret("redis-api.password"), socket_timeout=5).ping()
    with pytest.raises(redis.ConnectionError) as uncertified_redis:  # TLS, the api's password, no certificate
        redis_client(project, host, "api", None).ping()
    assert "Authentication" not in str(uncertified_redis.value), "refused for its password, not its certificate"
    api = redis_client(project, host, "api", "api")
    assert api.exists("vigil:nothing") == 0  # the api's user reads
    with pytest.raises(redis.exceptions.NoPermissionError):
        api.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        api.set("vigil:forged", "1")
    # And inside the server's own container, with its certificate but no password, a command is refused too.
    tls_args = ["--tls", "--cacert", "/run/secrets/ca.pem", "--cert", "/run/secrets/tls.pem", "--key", "/run/secrets/tls.key"]
    inside = project.compose("exec", "-T", "redis", "redis-cli", *tls_args, "ping").stdout
    assert "NOAUTH" in inside, inside

    # SeaweedFS's master has no users: its client-certificate check is what keeps assign from anyone.
    weed = address(project, "seaweedfs")

    def opener(user: str | None) -> urllib.request.OpenerDirector:
        https = urllib.request.HTTPSHandler(context=tls_context(project, user))
        return urllib.request.build_opener(urllib.request.ProxyHandler({}), https)

    with pytest.raises(OSError) as uncertified_assign:  # an ssl error or a reset, as the handshake ends
        opener(None).open(f"https://{weed}:9333/dir/assign", timeout=10)
    assert not isinstance(uncertified_assign.value, urllib.error.HTTPError), "the master answered without a certificate"
    with pytest.raises(urllib.error.HTTPError) as plain_assign:  # Go's TLS server answers plain HTTP with a 400
        opener(None).open(f"http://{weed}:9333/dir/assign", timeout=10)
    assert plain_assign.value.code == 400
    # With a certificate, the keys of its security.toml still hold: an upload without the master's token is refused.
    with opener("reader").open(f"https://{weed}:9333/dir/assign", timeout=10) as reply:
        fid = json.loads(reply.read())["fid"]
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        opener("reader").open(urllib.request.Request(f"https://{weed}:8080/{fid}", data=b"forged", method="PUT"), timeout=10)
    assert unsigned.value.code == 401


def test_switching_the_source_in_env(project: ComposeFleet) -> None:
    make_other_video(project.folder / "video" / "vtest.mp4", project.folder / "media" / "other.mp4", OTHER_FRAMES)
    (project.folder / "docker-compose.override.yml").write_text(MEDIA_OVERRIDE)
    project.write_env(VIGIL_API_PORT=str(project.api_port), source_id="cam1", video_source="media/other.mp4")
    project.timed("switch_source", lambda: project.compose("up", "-d", "reader"))

    totals = wait_until(
        lambda: drained(project, "cam1", OTHER_FRAMES), 300, "cam1 drained", interval=2, describe=lambda: project.totals("cam1")
    )
    assert_read_equals_inferred(totals, OTHER_FRAMES)
    events = project.events("cam1")
    assert events and all(e["source_id"] == "cam1" and e["state"] == "FINISHED" for e in events)


def test_scaling_and_a_killed_replica_lose_nothing(project: ComposeFleet) -> None:
    project.write_env(VIGIL_API_PORT=str(project.api_port), source_id="cam2", video_loop="true", video_realtime="true")
    project.compose("up", "-d", "reader")
    wait_until(lambda: (project.totals("cam2") or {}).get("frames_read", 0) >= 20, 120, "cam2 streaming")

    project.timed("scale_up", lambda: project.make("scale-workers", "DETECTION=3", "CLASSIFICATION=2"))

    def scaled() -> bool:
        live = project.live_workers()
        detectors, classifiers = live.get(DETECTOR, []), live.get(CLASSIFIER, [])
        return len(detectors) == 3 and len(classifiers) == 2 and all(d["processed"] > 0 for d in detectors)

    project.timed(
        "scaled_and_all_processing",
        lambda: wait_until(scaled, 180, "3 + 2 live workers, every detector busy", describe=project.live_workers),
    )
    assert len(project.containers("detection")) == 3 and len(project.containers("classification")) == 2

    # Killed while it holds tasks. The victim is frozen first (docker pause): its waiting pull still gets
    # tasks it can never ack, which shows as the consumer's ack floor stuck far behind what was delivered
    # while the other replicas go on; then it is killed. A delivery beyond the newest message delivered is
    # a redelivery, so the delivery count growing past the stream position proves the tasks it held went to
    # the others after ack_wait (num_redelivered counts only redelivered tasks still unacked).
    durable = next(name for name in project.jetstream() if DETECTOR in name)

    def consumer() -> dict[str, Any]:
        return project.jetstream()[durable]

    def redeliveries() -> int:
        delivered = consumer()["delivered"]
        return int(delivered["consumer_seq"] - delivered["stream_seq"])

    def held_by_the_frozen() -> bool:
        info = consumer()
        return info["num_ack_pending"] > 0 and info["delivered"]["stream_seq"] - info["ack_floor"]["stream_seq"] >= 20

    # The newest replica: scaling down removes it, so the kill and the scaling each do their own part. (Kill
    # replica 1 and scaling down leaves no live detector while it restarts, and the router routes frames
    # only to live models: issue 15.)
    victim = max((row["Name"] for row in project.states()["detection"]), key=lambda name: int(name.rsplit("-", 1)[1]))
    before = redeliveries()
    for _attempt in range(5):  # its pull may expire before a task comes: thaw it, and freeze it again
        project.engine.docker("pause", victim)
        try:
            wait_until(held_by_the_frozen, 15, "a task held by the frozen replica", describe=consumer)
            break
        except AssertionError:
            project.engine.docker("unpause", victim)
    held = consumer()["num_ack_pending"]
    assert held_by_the_frozen(), consumer()
    project.engine.docker("kill", victim)
    project.timed(
        "killed_tasks_redelivered",
        lambda: wait_until(
            lambda: redeliveries() > before, 180, "the killed replica's tasks redelivered", interval=2, describe=consumer
        ),
    )
    project.figures["killed_replica_tasks_held"] = held
    project.figures["killed_replica_tasks_redelivered"] = redeliveries() - before

    project.timed("scale_down", lambda: project.make("scale-workers", "DETECTION=1", "CLASSIFICATION=1"))
    wait_until(
        lambda: {m: len(b) for m, b in project.live_workers().items()} == {DETECTOR: 1, CLASSIFIER: 1},
        120,
        "1 + 1 live workers",
        describe=project.live_workers,
    )
    read = project.totals("cam2")["frames_read"]  # type: ignore[index]
    wait_until(lambda: project.totals("cam2")["frames_read"] >= read + 30, 120, "cam2 goes on after scaling down")  # type: ignore[index]
    project.compose("stop", "reader")

    totals = project.timed(
        "cam2_drained",
        lambda: wait_until(
            lambda: drained(project, "cam2"), 300, "cam2 drained", interval=2, describe=lambda: project.totals("cam2")
        ),
    )
    for model, counts in totals["models"].items():  # every routed task answered, none an error
        assert counts["inferred"] == counts["routed"] == totals["frames_routed"] and counts["errors"] == 0, (model, counts)
    assert totals["frames_routed"] == totals["frames_read"] - totals["frames_dropped"]


def test_restarting_registrator_and_router_mid_run_loses_and_doubles_no_event(project: ComposeFleet) -> None:
    project.write_env(VIGIL_API_PORT=str(project.api_port), source_id="cam3")
    project.compose("up", "-d", "reader")
    wait_until(lambda: (project.totals("cam3") or {}).get("frames_read", 0) >= 100, 120, "cam3 under way")
    project.timed("restart_registrator", lambda: project.compose("restart", "registrator"))
    wait_until(lambda: (project.totals("cam3") or {}).get("frames_routed", 0) >= 300, 180, "cam3 further on")
    project.timed("restart_router", lambda: project.compose("restart", "router"))

    totals = wait_until(
        lambda: drained(project, "cam3", SAMPLE_FRAMES), 600, "cam3 drained", interval=2, describe=lambda: project.totals("cam3")
    )
    assert_read_equals_inferred(totals, SAMPLE_FRAMES)
    # The same video as cam0, so the same events: one lost or doubled would show here.
    calm, restarted = project.events("cam0"), project.events("cam3")
    assert [(e["label"], e["state"], e["frames"]) for e in restarted] == [(e["label"], e["state"], e["frames"]) for e in calm]
    times = [[e["start"], e["end"]] for e in calm]
    assert [t for e in restarted for t in (e["start"], e["end"])] == pytest.approx([t for pair in times for t in pair], abs=0.01)


def test_down_keeps_the_events_and_a_truncated_file_fails_once(project: ComposeFleet) -> None:
    before = {e["id"]: decoded_clip(project, e)[2] for e in project.events("cam0")}
    project.timed("down", lambda: project.make("down"))
    assert project.states() == {}

    truncated_copy(project.folder / "video" / "vtest.mp4", project.folder / "media" / "cut.mp4", 0.3)
    project.write_env(VIGIL_API_PORT=str(project.api_port), source_id="cam4", video_source="media/cut.mp4")
    done = project.timed("make_up_cached", lambda: project.make("up"))
    assert f"dashboard: http://127.0.0.1:{project.api_port}/" in done.stdout
    wait_until(lambda: healthy(project, LONG_RUNNING), 240, "every service healthy again", describe=project.states)

    after = {e["id"]: decoded_clip(project, e)[2] for e in project.events("cam0")}
    assert after == before  # the same events, with the same clips

    def reader_settled() -> dict[str, Any] | None:
        found = project.inspect(project.containers("reader", all_states=True)[0])
        return found if found["State"]["Status"] == "exited" and not found["State"]["Restarting"] else None

    reader = wait_until(reader_settled, 180, "the reader ended", describe=project.states)
    health = {s["source_id"]: s for s in project.get("/api/v1/sources")["sources"]}["cam4"]
    assert health["state"] == "failed" and "truncated" in (health["last_error"] or "")
    logs = project.compose("logs", "--no-log-prefix", "reader").stdout
    assert logs.count("source streaming") == 1 and logs.count("vigil.reader: source failed") == 1, logs[-3000:]
    assert reader["RestartCount"] == 0 and reader["State"]["ExitCode"] == 0  # failed once, never replayed

    assert "vigildeploy" in project.make("ps").stdout
    shown = follow(project, ["make", "--no-print-directory", "logs"], "registrator", timeout=60)
    assert "api" in shown and "registrator" in shown


def test_make_down_then_down_v_leave_nothing(project: ComposeFleet) -> None:
    project.make("down")
    assert project.states() == {}
    label = "label=com.docker.compose.project=vigildeploy"
    assert project.engine.docker("volume", "ls", "-q", "--filter", label).stdout.split()  # kept by down
    project.compose("down", "-v")
    assert project.engine.docker("volume", "ls", "-q", "--filter", label).stdout.split() == []
    assert project.engine.docker("network", "ls", "-q", "--filter", label).stdout.split() == []
    assert project.engine.docker("ps", "-aq", "--filter", label).stdout.split() == []


def test_gpu_profile_asks_for_the_gpus(project: ComposeFleet) -> None:
    config = json.loads(project.compose("--profile", "gpu", "config", "--format", "json").stdout)
    for name in ("detection-gpu", "classification-gpu"):
        service = config["services"][name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        assert service["build"]["target"] == "worker-gpu"
        assert "CUDAExecutionProvider" in service["environment"]["providers"]
