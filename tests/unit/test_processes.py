"""The process harness (fleet/processes.py) that the local fleet, the tests and the benchmarks share."""

from __future__ import annotations

import asyncio
import signal

import pytest

from fleet.processes import ServiceExited, ServiceProcess, service_process, start_service

TOY = "tests.support.toy_service"


async def wait_for_line(proc: ServiceProcess, text: str) -> None:
    while not any(text in line for line in proc.tail):
        proc.check_running()
        await asyncio.sleep(0.02)


async def test_settings_reach_the_service_and_its_output_is_kept_and_echoed() -> None:
    echoed: list[str] = []
    proc = await start_service(TOY, {"TOY_GREETING": "hello"}, name="toy", echo=echoed.append)
    await asyncio.wait_for(wait_for_line(proc, "ready hello"), 30)
    took = await proc.stop(grace=30)
    assert proc.returncode == 0 and took < 30  # SIGTERM was enough
    assert list(proc.tail) == echoed == ["ready hello\n", "stopped\n"]
    proc.check_exit(0)


async def test_a_service_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    proc = await start_service(TOY, {"TOY_MODE": "stubborn"})
    await asyncio.wait_for(wait_for_line(proc, "ready"), 30)
    await proc.stop(grace=0.5)
    assert proc.returncode == -signal.SIGKILL


async def test_a_crash_is_reported_with_its_last_lines() -> None:
    proc = await start_service(TOY, {"TOY_MODE": "crash"}, name="toy")
    assert await asyncio.wait_for(proc.wait(), 30) == 3
    with pytest.raises(ServiceExited, match=r"toy exited with code 3; its last lines:\nboom"):
        proc.check_running()
    with pytest.raises(ServiceExited, match="expected exit code 0"):
        proc.check_exit(0)


async def test_the_context_kills_what_still_runs() -> None:
    async with service_process(TOY, {"TOY_MODE": "stubborn"}) as proc:
        await asyncio.wait_for(wait_for_line(proc, "ready"), 30)
    assert proc.returncode == -signal.SIGKILL
