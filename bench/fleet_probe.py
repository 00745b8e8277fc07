"""Watching a local fleet from outside, for the end-to-end benchmark and the soak: its service and server
processes by name (CPU, RSS), and a fleet that lets the caller read them just before it is stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import psutil

from fleet.run import Fleet
from fleet.servers import NAMES, LocalServers

# The servers under their binaries' names: what the bus and storage cost, next to the services.
SERVER_NAMES = {"nats": "nats-server", "redis": "redis-server", "weed": "weed"}
assert set(SERVER_NAMES) == set(NAMES)
MB = 2**20


class ProbedFleet(Fleet):
    """A quiet fleet that calls `before_stop` first thing when run_fleet stops it (drained, or `stop` set):
    CPU times read there are the run's, without the services' own shutdown."""

    def __init__(self, before_stop: Callable[[], None], echo: bool = False) -> None:
        super().__init__(echo=echo)
        self._before_stop = before_stop

    async def stop_all(self) -> None:
        self._before_stop()
        await super().stop_all()


class FleetProcesses:
    """The fleet's services (by their fleet label, e.g. detection-1) and the servers (by binary name)."""

    def __init__(self, fleet: Fleet, servers: LocalServers) -> None:
        self.fleet = fleet
        self.servers = servers
        self._cache: dict[int, psutil.Process] = {}  # by pid: psutil checks a cached one was not reused
        self._last_cpu: dict[str, float] = {}

    def _process(self, pid: int) -> psutil.Process:
        if pid not in self._cache:
            self._cache[pid] = psutil.Process(pid)
        return self._cache[pid]

    def pids(self) -> dict[str, int]:
        pids = {p.name: p.process.pid for p in self.fleet.procs if p.process.returncode is None}
        for name, binary in SERVER_NAMES.items():
            pid = self.servers.pid(name)
            if pid is not None:
                pids[binary] = pid
        return pids

    def _each(self, read: Callable[[psutil.Process], float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids().items():
            with contextlib.suppress(psutil.Error):  # it has just exited: the next sample goes without it
                out[name] = read(self._process(pid))
        return out

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds of each process; for one that has exited since (a file's reader), its last reading."""
        self._last_cpu |= self._each(lambda p: sum(p.cpu_times()[:2]))
        return dict(self._last_cpu)

    def rss_mb(self) -> dict[str, float]:
        return self._each(lambda p: p.memory_info().rss / MB)

    async def track(self, peaks: dict[str, float], every: float) -> None:
        """Keep the highest RSS seen per process in `peaks`, and each one's last CPU reading, until cancelled."""
        while True:
            for name, rss in self.rss_mb().items():
                peaks[name] = max(peaks.get(name, 0.0), rss)
            self.cpu_seconds()
            await asyncio.sleep(every)


def exit_logs(fleet: Fleet) -> str:
    """The last log lines of each service that exited with an error: why a quiet run failed."""
    return "".join(
        f"--- {p.name} exited with code {p.process.returncode}; its last lines:\n{''.join(p.tail)}"
        for p in fleet.procs
        if p.process.returncode not in (None, 0)
    )


def service_of(name: str) -> str:
    """A fleet label's service (detection-2 -> detection); servers keep their names."""
    head, _, tail = name.rpartition("-")
    return head if head and tail.isdigit() else name


def is_server(name: str) -> bool:
    return name in SERVER_NAMES.values()


def folder_mb(path: Path) -> float:
    """Disk use of a folder's files (allocated blocks, as du counts), 0 while it does not exist."""
    if not path.exists():
        return 0.0
    total = 0
    for f in path.rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_blocks * 512
        except OSError:
            pass  # removed while we walk: a volume expiring
    return total / MB
