"""The e2e tests share one fleet run with the contract tests: its fixtures live in tests/support/fleet_run.py."""

from tests.support.fleet_run import FPS, POST, PRE, SAMPLE_ZONES, SampleRun, api_service

__all__ = ["FPS", "POST", "PRE", "SAMPLE_ZONES", "SampleRun", "api_service"]
