"""The detection worker: the worker service (services/worker) in its detection role."""

from services.worker.cli import run_role

run_role("detection")
