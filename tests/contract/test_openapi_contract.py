"""Schemathesis against the real api over the sample fleet run's events (real Redis and SeaweedFS).

Every check, all four phases (stateful included), a fixed seed and a random one, and a run that needs a
token. The CLI writes a JSON report; the test reads it, so a failure, an error or any warning (a reference
that does not resolve, a body nothing can deserialize, test data never found) fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from fleet.servers import ServerSet
from tests.contract.hooks import TOKEN_ENV
from tests.e2e.conftest import SAMPLE_ZONES, SampleRun, api_service
from tests.integration.helpers import running

pytestmark = pytest.mark.timeout(420)  # the first test to ask for sample_run waits for the fleet's run

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Bounded so that both runs together stay near a minute and a half on a busy 2-core machine (about 400
# cases each); the coverage phase, which walks every parameter's edges and every undeclared method, does
# not depend on it.
MAX_EXAMPLES = 20
FIXED_SEED = 20
TOKEN = "contract-test-token-Kq9xQ2mZ7vB4nT8wR1y"
OPERATIONS = 8  # the document's operations, less openapi.json itself (Schemathesis leaves its own schema out)


def _seeds() -> list[Any]:
    # A random seed each run finds what the fixed one cannot; the report prints it, so a failure replays.
    return [
        pytest.param(FIXED_SEED, None, id=f"seed{FIXED_SEED}"),
        pytest.param(random.SystemRandom().randrange(2**31), TOKEN, id="random-seed-with-token"),
    ]


async def schemathesis(base: str, seed: int, token: str | None, report: Path) -> tuple[int, str]:
    env = os.environ | {"SCHEMATHESIS_HOOKS": "tests.contract.hooks", "PYTHONPATH": str(REPO)}
    schema_url = f"{base}/api/v1/openapi.json"
    auth: list[str] = []
    if token:
        env[TOKEN_ENV] = token
        auth = ["-H", f"Authorization: Bearer {token}"]
    cli = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(cli),
        "--no-color",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        schema_url,
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(seed),
        "--report",
        "json",
        "--report-json-path",
        str(report),
        *auth,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.parametrize(("seed", "token"), _seeds())
async def test_the_api_keeps_its_openapi_contract(
    servers: ServerSet,
    sample_run: SampleRun,
    tmp_path: Path,
    seed: int,
    token: str | None,
) -> None:
    extra: dict[str, object] = {"zones": SAMPLE_ZONES} | ({"api_token": token} if token else {})
    async with running(api_service(servers, sample_run.prefix, as_api_user=True, **extra), ready=lambda s: bool(s.url)) as api:
        code, output = await schemathesis(api.url.rstrip("/"), seed, token, tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    tail = output[-6000:]
    assert report["seed"] == seed, tail
    assert report["failures"] == [] and report["errors"] == [], tail
    assert {name: ops for name, ops in report["warnings"].items() if ops} == {}, tail
    assert code == 0, tail
    assert report["operations"]["tested"] == OPERATIONS, report["operations"]
    assert {name: phase["status"] for name, phase in report["phases"].items()} == dict.fromkeys(
        ("examples", "coverage", "fuzzing", "stateful"), "success"
    ), report["phases"]
    # Enough cases that the run means something: several hundred on this document.
    assert report["test_cases"]["generated"] >= 300, report["test_cases"]
    print(
        f"schemathesis seed={seed} token={bool(token)}: {report['test_cases']['generated']} cases, {report['running_time']:.1f}s"
    )
