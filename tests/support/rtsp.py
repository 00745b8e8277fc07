"""Controls the test RTSP camera (rtsp_server.py) from pytest: a real gst-rtsp-server in a subprocess.

The server runs under Debian's /usr/bin/python3 because only that Python has GStreamer's `gi` bindings;
scripts/install-test-deps.sh installs them (CI runs it, so a skip only ever happens on a developer machine).
"""

from __future__ import annotations

import functools
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
INSTALL_HINT = "run `scripts/install-test-deps.sh` as root (apt-get installs GStreamer's RTSP server and python3-gi)"

_IMPORT_CHECK = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
elements = ("appsrc", "appsink", "filesrc", "qtdemux", "h264parse", "rtph264pay")
missing = [e for e in elements if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
"""


@functools.cache
def rtsp_available() -> str | None:
    """None when the test RTSP server can run here, else why not (meant for `pytest.skip`)."""
    if not SYSTEM_PYTHON.exists():
        return f"test RTSP server needs Debian's {SYSTEM_PYTHON}, which is missing; {INSTALL_HINT}"
    try:
        # -I: the venv's PYTHONPATH and friends must not leak into Debian's interpreter.
        done = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", _IMPORT_CHECK], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"checking GStreamer under {SYSTEM_PYTHON} timed out"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return f"test RTSP server unavailable ({lines[-1]}); {INSTALL_HINT}"
    return None


class RtspServer:
    """A live camera looping `video` at rtsp://127.0.0.1:PORT/live.

    port=0 takes a free port at the first start(); later starts reuse it, so stop() then start()
    looks to a client like the same camera going offline and coming back.
    """

    def __init__(self, video: Path, port: int = 0, path: str = "/live", ready_timeout: float = 30.0) -> None:
        self.video = Path(video)
        self.port = port
        self.path = path
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def url(self) -> str:
        if self.port == 0:
            raise RuntimeError("the port is only known after start()")
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        if not self.video.is_file():
            raise FileNotFoundError(self.video)
        self._lines = queue.Queue()
        # A file, not a pipe: GStreamer's warnings must never block the server on a full pipe.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open for the server's life; stop() closes it
        command = [str(SYSTEM_PYTHON), "-I", "-u", str(SERVER_SCRIPT), "--port", str(self.port), "--video", str(self.video)]
        command += ["--path", self.path]
        self._proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1
        )
        threading.Thread(target=self._read_stdout, args=(self._proc.stdout, self._lines), daemon=True).start()
        try:
            reply = self._expect("READY", self.ready_timeout)
        except Exception:
            self.stop()
            raise
        self.port = int(reply.split()[1])

    def stop(self) -> None:
        """Ends the server; its listening port is free once this returns."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def pause(self) -> None:
        """Stops sending frames while keeping every client connected, like a camera whose encoder hangs."""
        self._command("pause", "PAUSED")

    def resume(self) -> None:
        self._command("resume", "RESUMED")

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _command(self, command: str, ack: str) -> None:
        if self._proc is None or self._proc.stdin is None or not self.running:
            raise RuntimeError(f"cannot {command}: the RTSP server is not running{self._stderr_tail()}")
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        self._expect(ack, 5.0)

    def _expect(self, word: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"RTSP server: no {word} within {timeout:g} s{self._stderr_tail()}") from None
            if line is None:
                raise RuntimeError(f"RTSP server exited before {word}{self._stderr_tail()}")
            if line.split()[:1] == [word]:
                return line

    def _stderr_tail(self, lines: int = 20) -> str:
        if self._stderr is None:
            return ""
        # pread: seeking would move the offset the server writes at, as it shares this open file.
        fd = self._stderr.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        tail = text.strip().splitlines()[-lines:]
        return ":\n" + "\n".join(tail) if tail else ""

    @staticmethod
    def _read_stdout(stdout: IO[str] | None, lines: queue.Queue[str | None]) -> None:
        # This thread owns stdout and closes it at EOF: closing it from stop() could race a blocked read.
        if stdout is not None:
            with stdout:
                for line in stdout:
                    lines.put(line.strip())
        lines.put(None)
