"""Service processes for the local fleet, the tests and the benchmarks: one way to start, watch and stop them.

`start_service` runs `python -m <module>` from the repository's root with the given settings as environment
variables. Its output (stdout and stderr together) is read line by line as it comes: the last lines are kept,
so that a caller can say why a service died, and each line may be echoed. `stop` is what compose's stop does,
SIGTERM and after a grace SIGKILL; `kill` is a crash.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAIL_LINES = 20
# How long the output pump may run on after the process has exited (a grandchild could hold the pipe).
PUMP_GRACE = 5.0


class ServiceExited(RuntimeError):
    """A service ended when it should not have, or with the wrong exit code; the message holds its last lines."""


class ServiceProcess:
    """One running `python -m <module>`, with the tail of its output."""

    def __init__(self, name: str, module: str, process: asyncio.subprocess.Process, echo: Callable[[str], None] | None) -> None:
        self.name = name
        self.module = module
        self.process = process
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._echo = echo
        self._pump = asyncio.create_task(self._read_output())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal (SIGSTOP to freeze it, for one) if it still runs."""
        if self.running:
            self.process.send_signal(sig)

    async def kill(self) -> int:
        """SIGKILL, as a crash would: nothing of the service's own shutdown runs. Returns the exit code."""
        self.signal(signal.SIGKILL)
        return await self.wait()

    async def stop(self, grace: float = 20.0) -> float:
        """SIGTERM, as compose's stop does, then SIGKILL after `grace` seconds (at once if 0).

        Returns the seconds it took to exit.
        """
        started = time.monotonic()
        if self.running:
            if grace <= 0:
                await self.kill()
            else:
                self.signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.process.wait(), timeout=grace)
                except TimeoutError:
                    print(f"{self.name} did not stop in {grace:.0f} s: killed", flush=True)
                    await self.kill()
        await self.wait()
        return time.monotonic() - started

    async def wait(self) -> int:
        """Wait for the exit, and for the last of its output to be read."""
        code = await self.process.wait()
        try:
            await asyncio.wait_for(asyncio.shield(self._pump), PUMP_GRACE)
        except TimeoutError:
            self._pump.cancel()
        return code

    def describe_exit(self) -> str:
        lines = "".join(self.tail).rstrip() or "(no output)"
        return f"{self.name} exited with code {self.returncode}; its last lines:\n{lines}"

    def check_running(self) -> None:
        """Raise ServiceExited if it has ended: for a caller that waits on a service to come up."""
        if not self.running:
            raise ServiceExited(self.describe_exit())

    def check_exit(self, expected: int = 0) -> None:
        """Raise ServiceExited unless it has ended with `expected`."""
        if self.returncode != expected:
            raise ServiceExited(f"expected exit code {expected}: {self.describe_exit()}")

    async def _read_output(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            text = line.decode(errors="replace")
            self.tail.append(text)
            if self._echo is not None:
                self._echo(text)


async def start_service(
    module: str,
    env: Mapping[str, str],
    *,
    args: Sequence[str] = (),
    name: str | None = None,
    env_file: str | None = os.devnull,
    echo: Callable[[str], None] | None = None,
    own_session: bool = False,
) -> ServiceProcess:
    """`python -m <module> *args` with `env` over this process's environment.

    env_file: passed as `--env-file`; the default, /dev/null, makes the service read no .env, so that only `env`
    and the environment count. None passes no flag: the service reads the repository's .env, as `make run` wants.
    echo: called with each line of its output. own_session: its own process group, so that a Ctrl-C in the
    terminal reaches only the caller, which then stops the services in order.
    """
    env_args = ["--env-file", env_file] if env_file is not None else []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        *env_args,
        cwd=ROOT,
        env=os.environ | dict(env) | {"PYTHONUNBUFFERED": "1"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=own_session,
    )
    return ServiceProcess(name or module.rsplit(".", 1)[-1], module, process, echo)


@asynccontextmanager
async def service_process(
    module: str,
    env: Mapping[str, str],
    *,
    args: Sequence[str] = (),
    grace: float = 0.0,
    name: str | None = None,
    env_file: str | None = os.devnull,
) -> AsyncIterator[ServiceProcess]:
    """A service for the length of a `with` block, stopped at its end (killed at once with the default grace 0)."""
    proc = await start_service(module, env, args=args, name=name, env_file=env_file)
    try:
        yield proc
    finally:
        await proc.stop(grace)
