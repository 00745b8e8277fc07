"""The worker's command line: `python -m services.worker --role detection`, or `worker_role=detection` in the
environment. `python -m services.detection` and `python -m services.classification` run their role directly."""

from __future__ import annotations

import argparse
import os
import sys

from services.worker.service import InferenceWorker
from services.worker.settings import ROLES
from shared.lifecycle import main as serve

ROLE_VARIABLE = "worker_role"


def run_role(role: str, argv: list[str] | None = None) -> None:
    """Run the worker in `role` (a name in ROLES); argv as `--check-config`, `--env-file` (default sys.argv)."""
    serve(InferenceWorker, ROLES[role], argv)


def main(argv: list[str] | None = None) -> None:
    """`python -m services.worker`: the role from `--role`, else from the environment; the rest of argv is the service's."""
    parser = argparse.ArgumentParser(prog="python -m services.worker", add_help=False)
    parser.add_argument("--role", default=os.environ.get(ROLE_VARIABLE, ""))
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    known = ", ".join(ROLES)
    if args.role not in ROLES:
        problem = f"unknown role {args.role!r}" if args.role else "no role given"
        # Exit status 2, as for any other invalid configuration (shared.settings.load_settings).
        print(f"python -m services.worker: {problem}: pass --role ({known}) or set {ROLE_VARIABLE}", file=sys.stderr)
        raise SystemExit(2)
    run_role(args.role, rest)
