"""The whole fleet as local processes on real servers: no Docker needed.

Starts nats-server, redis-server and weed, then the services in dependency order, prefixes their
logs, shows progress, and for file sources ends by itself once the registrator says every source
is drained (every result in, every event final) and the notifier, if any, has sent their notices,
printing the events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats
from nats.aio.msg import Msg
from pydantic import ValidationError
from redis.exceptions import RedisError

from fleet.clients import connect_nats, redis_client
from fleet.processes import ServiceProcess, start_service
from fleet.servers import LocalServers, ServerError, free_ports
from services.notifier.settings import NotifierSettings
from services.worker.manifest import load_spec
from services.worker.settings import ROLES
from shared.access import Role, fleet_access, storage_keys, user_name
from shared.contracts import Event, InferenceResult, SourceDrained, SourceState, SourceStatus
from shared.keys import RedisKeys
from shared.logs import quiet_tls_eof
from shared.notices import NOTIFIER_DURABLE, events_stream_name
from shared.settings import VigilSettings
from shared.subjects import Subjects

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"reader": 36, "router": 35, "detection": 33, "classification": 34, "registrator": 32, "api": 37, "notifier": 31}


@dataclass
class Proc:
    name: str
    service: str
    extra: dict[str, str]
    handle: ServiceProcess
    metrics_port: int
    killed: bool = False  # by Fleet.kill: its exit is no failure of the run

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.handle.process

    @property
    def tail(self) -> deque[str]:
        """Its last log lines, also when they are not echoed: a quiet caller can still say why a service died."""
        return self.handle.tail


@dataclass
class Progress:
    frames: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    status: dict[str, SourceStatus] = field(default_factory=dict)
    drained: dict[str, SourceDrained] = field(default_factory=dict)

    def all_drained(self) -> bool:
        """Every source the reader reported has drained: with several files, the first to end is not the run's end."""
        return bool(self.drained) and self.drained.keys() >= self.status.keys()


class Fleet:
    def __init__(self, echo: bool = True, log_path: Path | None = None) -> None:
        self.procs: list[Proc] = []
        self.env_base: dict[str, str] = {}
        self.service_args: list[str] = []  # after `python -m services.<name>`, e.g. --env-file
        # Service -> the environment of its role's user (credentials): each process gets its own role's only.
        self.logins: dict[str, dict[str, str]] = {}
        self.progress = Progress()
        self.colour = sys.stdout.isatty()
        self.echo = echo  # services' log lines to stdout (benchmarks turn it off)
        # Every service's lines, also when not echoed: a long quiet run (the soak) says afterwards what went wrong.
        self.log_file = log_path.open("a", buffering=1) if log_path is not None else None
        self.ports: set[int] = set()  # given out to services, bound or not yet

    # -- processes -------------------------------------------------------------------------------

    async def spawn(self, service: str, label: str, extra: dict[str, str] | None = None) -> Proc:
        port = free_ports(1, avoid=self.ports)[0]
        self.ports.add(port)  # not bound until the service starts: another spawn must not pick it meanwhile
        if service not in self.logins:
            raise ValueError(f"no user for service {service!r}; known: {', '.join(sorted(self.logins))}")
        env = self.env_base | self.logins[service] | {"metrics_port": str(port), "instance": label} | (extra or {})
        colour = COLOURS.get(service, 37)
        prefix = f"\x1b[{colour}m{label:>15} |\x1b[0m " if self.colour else f"{label:>15} | "
        # Without options.env_file the services read the repository's .env, under the settings given here. Own
        # process group: Ctrl-C reaches the runner, which stops the services in order.
        handle = await start_service(
            f"services.{service}",
            env,
            args=self.service_args,
            name=label,
            env_file=None,
            echo=lambda line: self._echo(prefix, line, label),
            own_session=True,
        )
        proc = Proc(label, service, extra or {}, handle, port)
        self.procs.append(proc)
        return proc

    def proc(self, label: str) -> Proc:
        return next(p for p in self.procs if p.name == label)

    async def kill(self, label: str) -> None:
        """SIGKILL, as a crash would: nothing of the service's own shutdown runs."""
        proc = self.proc(label)
        proc.killed = True
        await proc.handle.kill()

    async def stop(self, label: str, grace: float = 20.0) -> float:
        """SIGTERM, as compose's stop does; killed after `grace` seconds. Returns the seconds it took to exit."""
        return await self.proc(label).handle.stop(grace)

    async def restart(self, label: str) -> Proc:
        """Start a killed or stopped service again under the same name and settings."""
        old = self.proc(label)
        if old.handle.running:
            raise RuntimeError(f"{label} is still running")
        await old.handle.wait()  # the last of its output
        self.procs.remove(old)
        return await self.spawn(old.service, label, old.extra)

    def record(self, label: str, line: str) -> None:
        """A service's log line into the log file, when the fleet keeps one."""
        if self.log_file is not None:
            self.log_file.write(f"{label:>15} | {line}")

    def _echo(self, prefix: str, line: str, label: str) -> None:
        self.record(label, line)
        if self.echo:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()

    async def stop_all(self) -> None:
        # Reverse start order: the reader stops first, the registrator (which finalises events) last.
        for proc in reversed(self.procs):
            await self.stop(proc.name)

    async def wait_for_models(self, router: Proc, models: set[str], timeout: float = 90.0) -> None:
        """The reader starts only once the router routes to every model: no frame goes uninferred."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                for proc in self.procs:
                    proc.handle.check_running()  # ServiceExited, with its last lines
                try:
                    async with http.get(f"http://127.0.0.1:{router.metrics_port}/healthz") as resp:
                        if models <= set((await resp.json()).get("live_models", [])):
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.3)
        raise RuntimeError(f"models {sorted(models)} not live within {timeout:.0f} s")

    # -- bus watching ----------------------------------------------------------------------------

    async def watch(self, nc: nats.NATS, subjects: Subjects) -> None:
        async def on_frame(msg: Msg) -> None:
            self.progress.frames["published"] += 1

        async def on_result(msg: Msg) -> None:
            result = InferenceResult.from_bytes(msg.data)
            self.progress.results[result.model] += 1
            if result.error:
                self.progress.errors[result.model] += 1

        async def on_status(msg: Msg) -> None:
            status = SourceStatus.from_bytes(msg.data)
            self.progress.status[status.source_id] = status

        async def on_drained(msg: Msg) -> None:
            drained = SourceDrained.from_bytes(msg.data)
            status = self.progress.status.get(drained.source_id)
            if status is not None and drained.run != status.run:
                return  # an older run, ended by the start of the current one (a reader restarted): not the end
            self.progress.drained[drained.source_id] = drained

        await nc.subscribe(subjects.frames_all, cb=on_frame)
        await nc.subscribe(subjects.results_all, cb=on_result)
        await nc.subscribe(subjects.source_status_all, cb=on_status)
        await nc.subscribe(subjects.drained("*"), cb=on_drained)

    async def wait_for_notices(self, nc: nats.NATS, settings: VigilSettings, timeout: float) -> bool:
        """Whether the notifier delivered every notice in its stream (none waiting, none unacked) within `timeout`.
        The notices of a file's last events come as it drains: stopping the notifier then would leave them unsent."""
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(nats.errors.Error):
                info = await js.consumer_info(events_stream_name(settings), NOTIFIER_DURABLE)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)


def print_events(events: list[Event], root: Path) -> None:
    if not events:
        print("no events")
        return
    header = f"{'id':<34} {'label':<8} {'state':<9} {'start':>7} {'dur':>6} {'frames':>6}  clip"
    print(header)
    print("-" * len(header))
    for e in events:
        clip = e.video_proof_path or e.error or "-"
        with contextlib.suppress(ValueError):
            clip = str(Path(clip).relative_to(root))
        print(f"{e.id:<34} {e.label:<8} {e.state.value:<9} {e.start:>6.1f}s {e.end - e.start:>5.1f}s {e.frames:>6}  {clip}")


@dataclass
class FleetOptions:
    data_dir: Path
    detection: int = 1
    classification: int = 1
    # Settings for every service (e.g. video_source, subject_prefix), over .env and the environment.
    settings: dict[str, str] = field(default_factory=dict)
    # The settings file every service reads (--env-file); None: ./.env where there is one.
    env_file: Path | None = None
    # The servers' addresses in every service's environment, over the settings file. False leaves them to
    # the file, which must then name these servers (the seed's .env block test).
    server_addresses: bool = True
    api_port: int = 0  # the dashboard's port; 0 takes a free one
    registrators: int = 1  # replicas sharing the sources by lease (services/registrator/leases.py)
    readers: int = 1  # replicas sharing the sources by lease (services/reader/service.py)
    keep_serving: bool = False  # after a file source has drained, keep the api up until Ctrl-C
    notices_timeout: float = 30.0  # after the sources drained, seconds the notifier has to deliver what is left


@dataclass
class FleetReport:
    code: int
    wall_seconds: float
    sources: dict[str, SourceStatus]
    drained: dict[str, SourceDrained]
    events: list[Event]
    error_results: dict[str, int]  # per model: frames a worker could not download, decode or infer
    dashboard: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "code": self.code,
                "wall_seconds": round(self.wall_seconds, 2),
                "sources": {k: v.model_dump() for k, v in self.sources.items()},
                "drained": {k: v.model_dump() for k, v in self.drained.items()},
                "events": [e.model_dump() for e in self.events],
                "error_results": self.error_results,
                "dashboard": self.dashboard,
            },
            indent=2,
        )


def worker_models() -> dict[str, tuple[str, str]]:
    """Worker role -> its model's name and task subject, from the roles' defaults: the router may publish
    those tasks, each worker consume its own (shared/access.py's `fleet_access` takes {model: subject})."""
    return {
        role: (load_spec(ROOT / cls.model_fields["model_dir"].default).name, cls.model_fields["task_subject"].default)
        for role, cls in ROLES.items()
    }


def wants_notifier(env_file: Path | None, settings: dict[str, str]) -> bool:
    """Whether the settings name a destination for event notices (webhooks, mqtt_host): only then does the fleet run
    the notifier. Settings it cannot read start it too, so that it stops with the reason and the run says so."""
    given = {k: v for k, v in settings.items() if k in NotifierSettings.model_fields}
    try:
        # The same sources the notifier reads: the environment and the settings file, under the keys given here.
        notifier = NotifierSettings(_env_file=env_file or ".env", **given)  # type: ignore[arg-type]
    except ValidationError:
        return True
    return notifier.destinations > 0


def grant_roles(servers: LocalServers, settings: VigilSettings) -> dict[str, dict[str, str]]:
    """Give the servers a user per role of this fleet (its subject_prefix), and return, per service, the
    environment that logs it in as its role's user, with the files of its role's SeaweedFS keys."""
    workers = worker_models()
    servers.add_users(fleet_access(settings, dict(workers.values())))
    server_set = servers.servers
    logins = {
        role.value: server_set.env(user_name(role, settings), storage_keys(role)) for role in Role if role is not Role.WORKER
    }
    for role, (model, _) in workers.items():
        logins[role] = server_set.env(user_name(Role.WORKER, settings, model), storage_keys(Role.WORKER))
    return logins


async def run_fleet(servers: LocalServers, options: FleetOptions, stop: asyncio.Event, fleet: Fleet | None = None) -> FleetReport:
    """Run the services on running servers until the sources drain (files) or `stop` is set (live).

    Each service logs in as its role's user; the runner itself watches as the admin.
    A caller that passes its own `fleet` can watch and kill or restart its processes meanwhile.
    """
    fleet = fleet or Fleet()
    server_set = servers.servers
    admin = server_set.env()
    # Addresses only: each service's credentials and keys are its role's (fleet.logins), never the admin's.
    addresses = server_set.addresses() if options.server_addresses else {}
    fleet.env_base = addresses | {"TMP_PATH": str(options.data_dir / "events"), "PYTHONUNBUFFERED": "1"} | options.settings
    fleet.service_args = ["--env-file", str(options.env_file)] if options.env_file else []
    known = {k: v for k, v in (admin | fleet.env_base).items() if k in VigilSettings.model_fields}
    settings = VigilSettings(_env_file=options.env_file or ".env", **known)  # type: ignore[arg-type]
    fleet.logins = await asyncio.to_thread(grant_roles, servers, settings)
    if not options.server_addresses:  # credentials only: the settings file names the servers
        named = server_set.addresses()
        fleet.logins = {service: {k: v for k, v in env.items() if k not in named} for service, env in fleet.logins.items()}
    subjects, keys = Subjects.from_settings(settings), RedisKeys(settings)
    started = time.monotonic()
    nc = await connect_nats(admin)
    redis = redis_client(admin)
    code = 0
    p = fleet.progress
    api_port = options.api_port or free_ports(1)[0]
    fleet.ports.add(api_port)
    dashboard = f"http://127.0.0.1:{api_port}/"
    try:
        await fleet.watch(nc, subjects)
        if wants_notifier(options.env_file, fleet.env_base):
            # Before the registrator: the notifier makes the stream its notices go to.
            await fleet.spawn("notifier", "notifier")
        for i in range(options.registrators):
            await fleet.spawn("registrator", "registrator" if options.registrators == 1 else f"registrator-{i + 1}")
        await fleet.spawn("api", "api", {"api_port": str(api_port), "api_host": "127.0.0.1"})
        print(f"dashboard: {dashboard}", flush=True)
        for i in range(options.detection):
            await fleet.spawn("detection", f"detection-{i + 1}")
        for i in range(options.classification):
            await fleet.spawn("classification", f"classification-{i + 1}")
        router = await fleet.spawn("router", "router")
        models = {load_spec(ROOT / "models" / "ssd_mobilenet_v2_coco").name}
        if options.classification:
            models.add(load_spec(ROOT / "models" / "efficientnet_lite0").name)
        await fleet.wait_for_models(router, models)
        for i in range(options.readers):
            await fleet.spawn("reader", "reader" if options.readers == 1 else f"reader-{i + 1}")
        last = 0.0
        while not stop.is_set() and not p.all_drained():
            await asyncio.sleep(0.2)
            if time.monotonic() - last >= 2.0:
                last = time.monotonic()
                try:
                    event_count: int | str = await redis.zcard(keys.events)
                except RedisError:  # Redis away (a fault test): the services wait for it, and so does this count
                    event_count = "?"
                inferred = ", ".join(f"{m} {n}" for m, n in sorted(p.results.items())) or "0"
                published = p.frames["published"]
                print(f"[progress] frames published {published}, inferred: {inferred}, events {event_count}", flush=True)
            crashed = [
                x.name for x in fleet.procs if x.process.returncode not in (None, 0) and x.service != "reader" and not x.killed
            ]
            if crashed:
                print(f"service(s) exited with an error: {', '.join(crashed)}", flush=True)
                code = 1
                break
        notifying = code == 0 and not stop.is_set() and any(x.service == "notifier" for x in fleet.procs)
        if notifying and not await fleet.wait_for_notices(nc, settings, options.notices_timeout):
            print(f"notices undelivered after {options.notices_timeout:.0f} s: the notifier stops with them", flush=True)
        if options.keep_serving and code == 0 and not stop.is_set():
            print(f"the sources have drained; the dashboard stays up at {dashboard} until Ctrl-C", flush=True)
            await stop.wait()
    finally:
        await fleet.stop_all()
        wall = time.monotonic() - started
        events = [Event.model_validate_json(raw) for raw in await redis.zrange(keys.events, 0, -1)]
        await redis.aclose()
        await nc.drain()
    if any(status.state is SourceState.FAILED for status in p.status.values()):
        code = 1
    return FleetReport(code, wall, dict(p.status), dict(p.drained), events, dict(p.errors), dashboard)


def print_report(report: FleetReport, data: Path) -> None:
    print()
    print_events(report.events, ROOT)
    print()
    for source_id, status in report.sources.items():
        print(
            f"source {source_id}: {status.state.value}, read {status.frames_read}, published "
            f"{status.frames_published}, dropped {status.frames_dropped}" + (f" ({status.error})" if status.error else "")
        )
    for source_id, d in report.drained.items():
        shed = f", shed {d.shed}" if d.shed else ""
        print(
            f"source {source_id}: routed {d.frames_routed} frames, tasks {d.tasks}{shed}, results {d.results}, events {d.events}"
        )
    print(
        f"error results {report.error_results or 0}; wall time {report.wall_seconds:.1f} s; "
        f"logs, clips and summary.json under {data}"
    )


async def run(args: argparse.Namespace) -> int:
    env_file = Path(args.env_file) if args.env_file else None
    if env_file is not None and (not env_file.exists() or env_file.is_dir()):
        print(f"settings file {env_file} (--env-file or VIGIL_ENV_FILE) not found: create it or name another", file=sys.stderr)
        return 2
    data = Path(args.data_dir).resolve()  # noqa: ASYNC240 - once, before anything runs
    # Each run starts from empty servers: old streams, consumers and events would mix into this run.
    for old in ("servers", "events", "logs"):
        shutil.rmtree(data / old, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    servers = LocalServers(
        data / "servers", log_dir=data / "logs", nats_nodes=args.nats_nodes, volume_servers=args.volume_servers
    )
    nats = "nats-server" if args.nats_nodes == 1 else f"a cluster of {args.nats_nodes} nats-server nodes"
    weed = "weed" if args.volume_servers == 1 else f"weed with {args.volume_servers} volume servers (replication 001)"
    print(f"starting {nats}, redis-server and {weed} under {data}", flush=True)
    try:
        await asyncio.to_thread(servers.start)
    except ServerError as exc:
        print(f"could not start the servers: {exc}", file=sys.stderr)
        return 1
    options = FleetOptions(
        data,
        args.detection,
        args.classification,
        {"video_source": args.source} if args.source else {},
        api_port=args.api_port,
        registrators=args.registrators,
        readers=args.readers,
        keep_serving=args.serve,
        env_file=env_file,
    )
    try:
        report = await run_fleet(servers, options, stop)
    finally:
        await asyncio.to_thread(servers.stop)
    print_report(report, data)
    (data / "summary.json").write_text(report.to_json())
    return report.code


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fleet", description="run the Vigil fleet locally, without Docker")
    parser.add_argument("--source", help="video file or stream URL (default: video_source from .env, else the sample video)")
    parser.add_argument("--data-dir", default=str(ROOT / ".data" / "run"), help="where servers keep data, logs and clips")
    parser.add_argument("--detection", type=int, default=1, help="detection worker processes")
    parser.add_argument("--classification", type=int, default=1, help="classification worker processes")
    parser.add_argument(
        "--registrators", type=_positive, default=1, help="registrator replicas; each source is held by one of them"
    )
    parser.add_argument("--readers", type=_positive, default=1, help="reader replicas; each source is read by one of them")
    parser.add_argument("--api-port", type=int, default=8080, help="port of the api and dashboard (0: a free one)")
    parser.add_argument(
        "--nats-nodes",
        type=_positive,
        default=1,
        help="NATS as a cluster of this many nodes (set stream_replicas too, e.g. 3; docs/operations.md)",
    )
    parser.add_argument(
        "--volume-servers",
        type=_positive,
        default=1,
        help="SeaweedFS volume servers; 2 or more replicate every file on two of them (docs/operations.md)",
    )
    parser.add_argument("--serve", action="store_true", help="keep the dashboard up after a file source has drained")
    parser.add_argument(
        "--env-file",
        default=os.environ.get("VIGIL_ENV_FILE"),
        help="settings file every service reads, which must exist (default: VIGIL_ENV_FILE, else .env if present)",
    )
    args = parser.parse_args()
    quiet_tls_eof()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
