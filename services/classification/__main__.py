"""The classification worker: the worker service (services/worker) in its classification role."""

from services.worker.cli import run_role

run_role("classification")
