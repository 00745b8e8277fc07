"""A live RTSP camera for tests: loops an H.264 MP4 in real time over gst-rtsp-server.

Runs under Debian's /usr/bin/python3 (the only Python with `gi`), never the project venv, so it uses the
standard library and GStreamer only: GStreamer also does the demux, which keeps a second FFmpeg (PyAV)
and its ABI out of this process.

Protocol: prints `READY <port>` once listening. Reads commands from stdin, one per line, and acknowledges
each on stdout: `pause` -> `PAUSED` (clients stay connected but get no more frames), `resume` -> `RESUMED`.
Exits on SIGTERM/SIGINT or when stdin closes, so a crashed test run leaves no camera behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 - gi.require_version must run before this import


@dataclass(frozen=True)
class Clip:
    frames: list[bytes]  # Annex-B access units
    caps: Gst.Caps
    frame_ns: int


def load_clip(path: str) -> Clip:
    """Demuxes the whole clip into memory once: every client then loops it without touching the file.

    config-interval=-1 repeats SPS/PPS before each IDR, so each keyframe is a valid starting point.
    """
    pipeline = Gst.parse_launch(
        "filesrc name=file ! qtdemux ! h264parse config-interval=-1"
        " ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    frames: list[bytes] = []
    caps: Gst.Caps | None = None
    try:
        while True:
            # Not pull-sample: it waits for EOS forever when the file is not an H.264 MP4 (errors end no stream).
            sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
            if sample is None:
                error = bus.pop_filtered(Gst.MessageType.ERROR)
                if error is not None:
                    raise RuntimeError(f"demuxing {path}: {error.parse_error()[0].message}")
                if sink.get_property("eos"):
                    break
                continue
            buf = sample.get_buffer()
            ok, info = buf.map(Gst.MapFlags.READ)
            if not ok:
                raise RuntimeError("cannot map a demuxed buffer")
            try:
                frames.append(bytes(info.data))
            finally:
                buf.unmap(info)
            caps = caps or sample.get_caps()
    finally:
        pipeline.set_state(Gst.State.NULL)
    if not frames or caps is None:
        raise RuntimeError(f"no H.264 frames in {path}")
    ok, num, den = caps.get_structure(0).get_fraction("framerate")
    frame_ns = Gst.util_uint64_scale(Gst.SECOND, den, num) if ok and num > 0 else Gst.SECOND // 25
    return Clip(frames, caps, frame_ns)


class Feeder(threading.Thread):
    """Pushes one client's media in real time; each client gets its own, starting on a keyframe."""

    def __init__(self, appsrc: Gst.Element, clip: Clip, feeding: threading.Event) -> None:
        super().__init__(daemon=True)
        self.appsrc, self.clip, self.feeding = appsrc, clip, feeding
        self.stopped = threading.Event()
        self.playing = threading.Event()
        # do-timestamp stamps with the pipeline's running time, which only exists once it is PLAYING;
        # a live appsrc asks for data exactly then.
        appsrc.connect("need-data", lambda *_: self.playing.set())

    def run(self) -> None:
        while not self.playing.wait(0.1):
            if self.stopped.is_set():
                return
        frame_s = self.clip.frame_ns / Gst.SECOND
        due = time.monotonic()
        index = 0
        while not self.stopped.is_set():
            if not self.feeding.is_set():
                while not self.feeding.wait(0.1):
                    if self.stopped.is_set():
                        return
                due = max(due, time.monotonic())  # no burst to catch up on the paused time
            delay = due - time.monotonic()
            if delay > 0 and self.stopped.wait(delay):
                return
            buf = Gst.Buffer.new_wrapped(self.clip.frames[index])
            buf.duration = self.clip.frame_ns
            if self.appsrc.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                return  # FLUSHING: the client is gone and its media is being torn down
            index = (index + 1) % len(self.clip.frames)
            due += frame_s


class Camera:
    def __init__(self, clip: Clip, port: int, path: str, address: str) -> None:
        self.clip = clip
        self.feeding = threading.Event()
        self.feeding.set()
        self.feeders: set[Feeder] = set()
        self.lock = threading.Lock()
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(address)
        self.server.set_service(str(port))
        factory = GstRtspServer.RTSPMediaFactory()
        # Not shared: every client gets its own pipeline, so a new client starts on a keyframe at once
        # instead of waiting up to a GOP, and a client leaving never disturbs another.
        factory.set_shared(False)
        # No config-interval on rtph264pay: it would repeat SPS/PPS before *each* IDR slice, and this clip
        # has two slices per frame, so FFmpeg split every keyframe into two half-decoded frames. The
        # clip already carries SPS/PPS before each IDR (load_clip).
        factory.set_launch(
            "( appsrc name=src is-live=true format=time do-timestamp=true ! h264parse ! rtph264pay name=pay0 pt=96 )"
        )
        factory.connect("media-configure", self.on_media_configure)
        self.server.get_mount_points().add_factory(path, factory)

    def on_media_configure(self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.clip.caps)
        feeder = Feeder(appsrc, self.clip, self.feeding)
        with self.lock:
            self.feeders.add(feeder)
        media.connect("unprepared", lambda *_: self.drop(feeder))
        feeder.start()

    def drop(self, feeder: Feeder) -> None:
        feeder.stopped.set()
        with self.lock:
            self.feeders.discard(feeder)

    def stop(self) -> None:
        with self.lock:
            feeders = list(self.feeders)
        for feeder in feeders:
            feeder.stopped.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8554, help="0 picks a free port (printed after READY)")
    parser.add_argument("--video", required=True, help="an H.264 MP4 without B-frames")
    parser.add_argument("--path", default="/live")
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args()

    Gst.init(None)
    camera = Camera(load_clip(args.video), args.port, args.path, args.address)
    loop = GLib.MainLoop()
    if camera.server.attach(None) == 0:
        print(f"cannot listen on {args.address}:{args.port}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, loop.quit)

    def on_command(line: str) -> bool:
        command = line.strip()
        if command == "pause":
            camera.feeding.clear()
            print("PAUSED", flush=True)
        elif command == "resume":
            camera.feeding.set()
            print("RESUMED", flush=True)
        elif command:
            print(f"unknown command {command!r}", file=sys.stderr, flush=True)
        return False

    def read_commands() -> None:
        for line in sys.stdin:
            GLib.idle_add(on_command, line)
        GLib.idle_add(loop.quit)

    threading.Thread(target=read_commands, daemon=True).start()
    print(f"READY {camera.server.get_bound_port()}", flush=True)
    loop.run()
    camera.stop()
    sys.stdout.flush()
    # Tearing down live client pipelines in finalizers can block; the kernel frees the port either way.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
