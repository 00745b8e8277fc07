"""A fixed CPU quota for a benchmarked process (a CFS quota in its own cgroup; root only).

On a small machine the replicas of a scale-out benchmark share the same cores with the load generator and the
servers, so a second replica finds no idle core to use and the benchmark measures the machine. Giving every
replica the same quota (e.g. half a core) stands for giving each its own core on a bigger machine: one replica
then has a fixed budget, two have twice that, and their ratio says whether the design scales.

Either cgroup v2 (the unified hierarchy with the `cpu` controller) or cgroup v1's `cpu` controller.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuQuotaError(RuntimeError):
    pass


def _controller() -> tuple[Path, bool]:
    """The folder new groups go in, and whether it is cgroup v2."""
    unified = CGROUP_ROOT / "cgroup.controllers"
    if unified.exists() and "cpu" in unified.read_text().split():
        return CGROUP_ROOT, True
    v1 = CGROUP_ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1, False
    raise CpuQuotaError(f"no cgroup cpu controller under {CGROUP_ROOT}: run without --replica-cpu")


class CpuQuota:
    """One cgroup holding processes to `cores` CPU seconds per second, removed by `close`."""

    def __init__(self, name: str, cores: float) -> None:
        if cores <= 0:
            raise CpuQuotaError(f"a CPU quota must be above 0 cores, not {cores}")
        root, self.v2 = _controller()
        self.path = root / name
        quota = round(cores * PERIOD_US)
        try:
            self.path.mkdir(exist_ok=True)
            if self.v2:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        except PermissionError as exc:
            raise CpuQuotaError(f"cannot make a cgroup at {self.path} ({exc}): --replica-cpu needs root") from exc

    def add(self, pid: int) -> None:
        """The process and all its threads."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        """Once its processes have exited: a cgroup with members cannot be removed."""
        with contextlib.suppress(OSError):
            self.path.rmdir()
