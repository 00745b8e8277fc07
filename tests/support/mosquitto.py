"""Debian's mosquitto, as a test's MQTT broker on a free port (scripts/install-test-deps.sh installs it), and an
MQTT subscriber that collects what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt

from fleet.servers import free_ports
from tests.integration.helpers import wait_for

# Debian puts it in /usr/sbin, which is not on every user's PATH.
_PLACES = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in _PLACES if Path(p).is_file()), None)


class Mosquitto:
    """An anonymous broker on 127.0.0.1; it can be stopped and started again on the same port (a broker restart)."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.port = free_ports(1)[0]
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        process = self._spawn()
        with contextlib.suppress(AssertionError):  # a timeout is said below, with the broker's log
            await wait_for(lambda: process.poll() is not None or self._listening(), timeout, f"mosquitto on {self.port}")
        if not self._listening():
            self.stop()
            raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        return self.process

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class MqttWatch:
    """An MQTT subscriber of the notices' topic, collecting what arrives."""

    def __init__(self, port: int, topic: str) -> None:
        self.port, self.topic = port, topic
        self.got: list[dict[str, Any]] = []
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"watch-{self.topic}") as client:
            await client.subscribe(self.topic, qos=1)
            self.ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                self.got.append(json.loads(message.payload))
