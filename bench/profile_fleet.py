"""Profile every service of a benchmark's fleet with py-spy (all threads, native frames off), and say per
service where its CPU goes: the functions with the most samples on CPU, by self time and with their callees.

    python -m bench.profile_fleet [--label NAME] [--] python -m bench.e2e 1

runs the command, attaches `py-spy record` to each `python -m services.<name>` process as it appears (a fleet
per case, so one profile per process), writes their collapsed stacks under bench/results/profiles/<label>/
(not committed: flame graphs can be drawn from them) and the summary to bench/results/profile_<label>.json.
py-spy is not one of the project's dependencies: `pip install py-spy` first (it reads the processes' memory,
so it needs root or ptrace rights).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, write_result

SERVICE = re.compile(r"-m (services\.\w+)")
POLL = 0.2  # s between looks for new service processes: each starts in more than a second (imports, model)


def service_name(proc: psutil.Process) -> str | None:
    try:
        match = SERVICE.search(" ".join(proc.cmdline()))
    except psutil.Error:
        return None
    return match.group(1).split(".")[1] if match else None


def attach(py_spy: str, pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    # --nonblocking: the process is not paused for each sample, so the profile costs it nothing but a little
    # of the machine's CPU; --idle off: only samples on CPU count (waiting on a socket is not work).
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--nonblocking", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run(command: list[str], folder: Path, py_spy: str, rate: int) -> list[tuple[str, Path]]:
    main = await asyncio.create_subprocess_exec(*command)
    me = psutil.Process(main.pid)
    seen: set[int] = set()
    profiles: list[tuple[str, Path]] = []
    spies: list[subprocess.Popen[bytes]] = []
    while main.returncode is None:
        try:
            children = me.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            if child.pid in seen:
                continue
            name = service_name(child)
            if name is None:
                continue
            seen.add(child.pid)
            out = folder / f"{name}-{child.pid}.txt"
            spies.append(attach(py_spy, child.pid, out, rate))
            profiles.append((name, out))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(main.wait(), POLL)
    for spy in spies:  # each ends with its process and writes its file then
        spy.wait(timeout=60)
    if main.returncode:
        sys.exit(f"{' '.join(command)} failed with code {main.returncode}")
    return profiles


def read_collapsed(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def short(frame: str) -> str:
    """'decode_jpeg (shared/jpeg.py:88)' -> 'decode_jpeg (shared/jpeg.py)'; site-packages paths cut to the package."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\(.*site-packages/", "(", re.sub(r"\(.*/lib/python3\.\d+/", "(stdlib/", frame))


def summarise(stacks: Counter[tuple[str, ...]], top: int) -> dict[str, Any]:
    total = sum(stacks.values())
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [short(f) for f in stack if not f.startswith(("process ", "thread "))]
        thread = next((f for f in stack if f.startswith("thread ")), "")
        threads[re.sub(r"thread \(0x[0-9A-Fa-f]+\)", "thread", thread)] += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    return {"samples": total, "self_percent": share(own), "inclusive_percent": share(inclusive)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="profile", help="folder under bench/results/profiles/")
    parser.add_argument("--rate", type=int, default=100, help="samples per second per process")
    parser.add_argument("--top", type=int, default=25, help="functions listed per service")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the benchmark to profile (default: python -m bench.e2e 1)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        sys.exit("py-spy is not on PATH: pip install py-spy (it is not one of the project's dependencies)")
    command = [c for c in args.command if c != "--"] or [sys.executable, "-m", "bench.e2e", "1"]
    folder = RESULTS / "profiles" / args.label
    folder.mkdir(parents=True, exist_ok=True)
    profiles = asyncio.run(run(command, folder, py_spy, args.rate))
    merged: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for name, path in profiles:
        merged[name].update(read_collapsed(path))
    summary = {name: summarise(stacks, args.top) for name, stacks in sorted(merged.items())}
    for name, got in summary.items():
        print(f"\n{name}: {got['samples']} samples on CPU; self %, then with callees %")
        for (own, own_pct), (inc, inc_pct) in zip(got["self_percent"][:12], got["inclusive_percent"][:12], strict=False):
            print(f"  {own_pct:5.1f}  {own[:70]:70}  {inc_pct:5.1f}  {inc[:70]}")
    shown = ["python", *command[1:]] if command[0] == sys.executable else command  # no path of this machine
    write_result(f"profile_{args.label}", {"command": shown, "services": summary})


if __name__ == "__main__":
    main()
