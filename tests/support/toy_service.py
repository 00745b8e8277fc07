"""A stand-in service for the process harness's tests (fleet/processes.py): `python -m tests.support.toy_service`.

TOY_MODE=serve prints "ready" and runs until SIGTERM, then exits 0; stubborn ignores SIGTERM; crash prints
"boom" on stderr and exits 3. It takes --env-file as the services do, and ignores it.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main() -> None:
    mode = os.environ.get("TOY_MODE", "serve")
    if mode == "crash":
        print("boom", file=sys.stderr)
        sys.exit(3)
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term if mode == "serve" else signal.SIG_IGN)
    print(f"ready {os.environ.get('TOY_GREETING', '')}", flush=True)
    while not stopping:
        time.sleep(0.02)
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
