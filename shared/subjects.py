"""Every subject, stream and durable consumer name, declared in one place.

Each stream has exactly one owning service, which creates or updates it; everyone else only
publishes into it or consumes from it. The seed's services each re-declared the streams and
overwrote one another's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from shared.settings import VigilSettings
from shared.ttl import parse_ttl


@dataclass(frozen=True)
class Subjects:
    """Frames and results go on one subject per source (`<base>.<source_id>`): a registrator replica consumes only
    the sources it holds (issue 17), and a router or an observer takes them all with the `_all` wildcards."""

    _frames: str
    _results: str
    _prefix: str

    @classmethod
    def from_settings(cls, settings: VigilSettings) -> Subjects:
        prefix = f"{settings.subject_prefix}." if settings.subject_prefix else ""
        return cls(_frames=prefix + settings.topic_stream, _results=prefix + settings.results_subject, _prefix=prefix)

    def frames(self, source_id: str) -> str:
        return f"{self._frames}.{source_id}"

    @property
    def frames_all(self) -> str:
        return f"{self._frames}.*"

    def results(self, source_id: str) -> str:
        return f"{self._results}.{source_id}"

    @property
    def results_all(self) -> str:
        return f"{self._results}.*"

    @staticmethod
    def source_of(subject: str) -> str:
        """The source a per-source subject (frames, results, statuses, summaries) is about: its last token."""
        return subject.rsplit(".", 1)[-1]

    def task(self, subject: str) -> str:
        return self._prefix + subject

    def source_status(self, source_id: str) -> str:
        return f"{self._prefix}vigil.sources.{source_id}"

    @property
    def source_status_all(self) -> str:
        return f"{self._prefix}vigil.sources.>"

    def source_health(self, source_id: str) -> str:
        return f"{self._prefix}vigil.health.{source_id}"

    @property
    def source_health_all(self) -> str:
        return f"{self._prefix}vigil.health.>"

    def routed(self, source_id: str) -> str:
        return f"{self._prefix}vigil.routed.{source_id}"

    @property
    def routed_all(self) -> str:
        return f"{self._prefix}vigil.routed.>"

    def drained(self, source_id: str) -> str:
        return f"{self._prefix}vigil.drained.{source_id}"

    def dead_letter(self, service: str) -> str:
        return f"{self._prefix}vigil.dlq.{service}"

    def is_source_status(self, subject: str) -> bool:
        return subject.startswith(f"{self._prefix}vigil.sources.")

    def is_routed(self, subject: str) -> bool:
        return subject.startswith(f"{self._prefix}vigil.routed.")


def _stream_name(settings: VigilSettings, base: str) -> str:
    prefix = settings.subject_prefix.upper().replace(".", "_").replace("-", "_")
    return f"{prefix}_{base}" if prefix else base


# Durable consumers: the router's is shared by all its replicas (work stealing); the registrator has one per source
# on each stream, bound by whichever replica holds the source's lease (services/registrator/leases.py), so the
# position survives a move.
ROUTER_DURABLE = "router"
# The router's consumer of the detection results that give crops (the cascade), shared by its replicas too.
ROUTER_CROPS_DURABLE = "router-crops"


def registrator_frames_durable(source_id: str) -> str:
    return f"registrator-frames-{source_id}"


def registrator_results_durable(source_id: str) -> str:
    return f"registrator-results-{source_id}"


def worker_durable(model: str) -> str:
    return f"worker-{model}"


def frames_stream_name(settings: VigilSettings) -> str:
    return _stream_name(settings, "FRAMES")


def results_stream_name(settings: VigilSettings) -> str:
    return _stream_name(settings, "RESULTS")


def frames_stream(settings: VigilSettings) -> StreamConfig:
    """Owned by the reader. Frame references and source lifecycle share one stream so that a
    consumer sees a source's ENDED status after its last frame, in order."""
    subjects = Subjects.from_settings(settings)
    return StreamConfig(
        name=frames_stream_name(settings),
        subjects=[subjects.frames_all, subjects.source_status_all],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        # A reference outliving its JPEG's TTL points at nothing.
        max_age=float(parse_ttl(settings.ttl_bucket)),
        max_msgs=settings.frames_stream_max_msgs,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
    )


def task_stream_name(settings: VigilSettings, model: str) -> str:
    return _stream_name(settings, f"TASKS_{model.upper().replace('-', '_')}")


def task_stream(settings: VigilSettings, model: str, subject: str, *, max_age: float, cap: int) -> StreamConfig:
    """Owned by the workers of `model`: a work queue, capped per subject, dropping the oldest task.

    On disk, not in memory: a memory stream does not survive a NATS restart, and with it would go the
    queued tasks and the stream itself (workers and router would then fail until one re-created it)."""
    return StreamConfig(
        name=task_stream_name(settings, model),
        subjects=[Subjects.from_settings(settings).task(subject)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=max_age,
        max_msgs_per_subject=cap,
        max_msgs=cap,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
    )


def results_stream(settings: VigilSettings) -> StreamConfig:
    """Owned by the registrator: results and routing summaries are durable, on disk."""
    subjects = Subjects.from_settings(settings)
    return StreamConfig(
        name=results_stream_name(settings),
        subjects=[subjects.results_all, subjects.routed_all],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.results_stream_max_age,
        max_msgs=settings.results_stream_max_msgs,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
    )
