"""Event notices from the registrator through the notifier to a real webhook receiver and a real MQTT broker
(Debian's mosquitto), over the real nats-server: order, signatures, retries, giving up, and a kill."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleet.processes import service_process
from fleet.servers import LocalServers
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from services.registrator.notices import Notices
from services.registrator.service import RegistratorService
from services.registrator.settings import RegistratorSettings
from shared.access import Role, fleet_access, storage_keys, user_name
from shared.bus import Bus
from shared.contracts import Event, EventState
from shared.metrics import Metrics, counter_value
from shared.notices import NOTIFIER_DURABLE, EventNotice, events_stream, events_stream_name
from shared.settings import VigilSettings
from shared.subjects import frames_stream
from tests.integration.helpers import running, wait_for, wait_until
from tests.integration.test_registrator import end_source, events_of, result, store_frames
from tests.support.events import stored_event
from tests.support.mosquitto import Mosquitto, MqttWatch, mosquitto_binary
from tests.support.settings import MakeSettings, settings_from
from tests.support.webhook import Receiver, fail_first

SECRET = b"test-signing-key"
# Two people in the 40 frames, 1.4 s apart (event_gap is 1 s): two events.
PEOPLE = (range(5, 13), range(26, 36))


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("no mosquitto binary: scripts/install-test-deps.sh installs Debian's (as root)")
    broker = Mosquitto(binary, tmp_path)
    await broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver(SECRET)
    await hook.start()
    try:
        yield hook
    finally:
        await hook.stop()


@pytest.fixture
async def role_env(local_servers: LocalServers, service_env: dict[str, str]) -> Any:
    """A role's own login under the test's prefix, as the fleet gives it (shared/access.py): the notices pass
    only where the permissions let them."""
    settings = settings_from(VigilSettings, service_env)
    await asyncio.to_thread(local_servers.add_users, fleet_access(settings, {}))

    def env(role: Role) -> dict[str, str]:
        return service_env | local_servers.servers.env(user_name(role, settings), storage_keys(role))

    return env


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.key"
    path.write_bytes(SECRET + b"\n")  # as `echo` writes it: the newline is not part of the key
    return path


def notifier_values(receiver: Receiver, secret_file: Path, **more: object) -> dict[str, Any]:
    return {
        "webhooks": [{"url": receiver.url}],
        "webhook_secret_file": secret_file,
        "notify_retry_initial": 0.05,
        "notify_retry_max": 0.5,
        **more,
    }


def types_by_event(notices: list[dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for notice in notices:
        found.setdefault(notice["after"]["id"], []).append(notice["type"])
    return found


def ends(notices: list[dict[str, Any]]) -> int:
    return sum(n["type"] == "end" for n in notices)


@pytest.mark.timeout(120)
async def test_each_event_reaches_the_webhook_and_mqtt_as_new_then_end_in_order(
    bus: Bus,
    role_env: Any,
    service_env: dict[str, str],
    repo_root: Path,
    receiver: Receiver,
    secret_file: Path,
    mosquitto: Mosquitto,
    unique: str,
) -> None:
    receiver.answer = fail_first(2)  # the first notice is refused twice: it must be retried, not lost
    refs = await store_frames(service_env, repo_root)
    watch = MqttWatch(mosquitto.port, f"{unique}/events")
    watching = asyncio.create_task(watch.run())
    await asyncio.wait_for(watch.ready.wait(), 10)
    mqtt = {"mqtt_host": "127.0.0.1", "mqtt_port": mosquitto.port, "mqtt_topic_prefix": unique}
    notifier = NotifierService(
        settings_from(NotifierSettings, role_env(Role.NOTIFIER), **notifier_values(receiver, secret_file, **mqtt))
    )
    registrator = RegistratorService(
        settings_from(
            RegistratorSettings,
            role_env(Role.REGISTRATOR),
            pre_roll=1.0,
            post_roll=1.0,
            event_gap=1.0,
            notify_update_interval=0.0,
        )
    )
    try:
        async with (
            running(notifier, lambda s: s.mqtt is not None and s.mqtt.connected),
            running(registrator, lambda s: s.storage is not None),
        ):
            await bus.ensure_stream(frames_stream(registrator.settings))
            for ref in refs:
                await bus.publish(bus.subjects.frames(ref.source_id), ref)
            for ref in refs:
                await bus.publish(bus.subjects.results(ref.source_id), result(ref, any(ref.seq in p for p in PEOPLE)))
            await end_source(bus)
            await wait_for(lambda: ends(receiver.accepted) == 2 and ends(watch.got) == 2, 60, "both events' end notices")
    finally:
        watching.cancel()

    events = {e.id: e for e in await events_of(service_env)}
    assert len(events) == 2 and all(e.state is EventState.FINISHED for e in events.values()), events
    for channel, notices in (("webhook", receiver.accepted), ("mqtt", watch.got)):
        kinds = types_by_event(notices)
        assert kinds.keys() == events.keys(), channel
        for sequence in kinds.values():
            # new first, end last, only updates between: in order, each once (no restart, no redelivery here)
            assert sequence[0] == "new" and sequence[-1] == "end", (channel, sequence)
            assert set(sequence[1:-1]) <= {"update"} and len(sequence) >= 3, (channel, sequence)
        for notice in notices:
            assert notice["source_id"] == "cam0" and notice["v"] == 1
            if notice["type"] == "new":
                assert notice["before"] is None
            else:  # Frigate's shape: the record before this transition and after it
                assert notice["before"]["id"] == notice["after"]["id"]
                assert notice["before"]["updated_at"] < notice["after"]["updated_at"]
        for notice in (n for n in notices if n["type"] == "end"):
            end = Event.model_validate(notice["after"])
            assert end == events[end.id]  # the very record the store holds
            assert end.video_proofs and end.image_proofs  # the end says where the proofs are
    # The first request was refused twice and then taken: the same notice, signed every time.
    assert [r.status for r in receiver.requests[:3]] == [500, 500, 200]
    assert receiver.requests[0].notice == receiver.requests[2].notice
    assert all(r.signed for r in receiver.requests)
    assert counter_value(notifier.m_retries, destination="webhook-0") == 2
    assert counter_value(notifier.m_given_up, destination="webhook-0") == 0


def notice_keys(notices: list[dict[str, Any]]) -> set[tuple[str, str, float]]:
    return {(n["after"]["id"], n["type"], n["after"]["updated_at"]) for n in notices}


async def publish_notices(bus: Bus, events: int, updates: int) -> set[tuple[str, str, float]]:
    """Through the registrator's own publisher: per event a new, `updates` updates and an end."""
    notices = Notices(bus, 0.0, Metrics("test_publisher"))
    for i in range(events):
        event = stored_event(f"cam{i % 3}-ev{i}", 100.0 + i, source_id=f"cam{i % 3}", state=EventState.CREATED, frames=1)
        await notices.publish(event)
        for n in range(1, updates + 1):
            pending = {"state": EventState.PENDING, "frames": n + 1, "updated_at": event.updated_at + n / 100}
            await notices.publish(event.model_copy(update=pending))
        await notices.publish(event.model_copy(update={"state": EventState.FINISHED, "updated_at": event.updated_at + 0.5}))
    return {
        (m.after.id, m.type.value, m.after.updated_at)
        for m in [await _decoded(bus, seq) for seq in range(1, 1 + events * (updates + 2))]
    }


async def _decoded(bus: Bus, seq: int) -> EventNotice:
    stored = await bus.js.get_msg(events_stream_name(bus.settings), seq)
    assert stored.data is not None
    return EventNotice.from_bytes(stored.data)


@pytest.mark.timeout(120)
async def test_a_notifier_killed_while_delivering_loses_no_notice(
    bus: Bus, role_env: Any, receiver: Receiver, secret_file: Path
) -> None:
    env = role_env(Role.NOTIFIER) | {
        "webhooks": json.dumps([{"url": receiver.url}]),
        "webhook_secret_file": str(secret_file),
        "webhook_timeout": "30",
        "notify_ack_wait": "2",
    }
    await bus.ensure_stream(events_stream(bus.settings))
    published = await publish_notices(bus, events=6, updates=8)
    assert len(published) == 60
    receiver.hold = asyncio.Event()
    receiver.hold.set()
    answered = 15

    def count_then_hang(notice: dict[str, Any]) -> int:
        if len(receiver.requests) + 1 == answered:
            assert receiver.hold is not None
            receiver.hold.clear()  # the next requests hang, held by the notifier when it dies
        return 200

    receiver.answer = count_then_hang
    async with service_process("services.notifier", env) as first:
        await wait_for(lambda: len(receiver.requests) >= answered or not first.running, 60, "the first notices")
        await wait_for(lambda: receiver.held > 0, 30, "requests hanging in the receiver")
        assert first.running, first.tail
        await first.kill()
    assert len(notice_keys(receiver.accepted)) < len(published)
    receiver.hold.set()
    async with service_process("services.notifier", env) as second:
        await wait_for(
            lambda: notice_keys(receiver.accepted) >= published or not second.running, 60, "every notice after the restart"
        )
        assert second.running, second.tail
        await wait_until(lambda: _all_acked(bus), 30, "every notice acked")
    assert notice_keys(receiver.accepted) == published  # at least once each: a notice held at the kill comes again
    for event_id, kinds in types_by_event(receiver.accepted).items():
        # Per event, in order: a redelivered notice repeats what came before it, never jumps back before new
        assert kinds[0] == "new" and kinds[-1] == "end", (event_id, kinds)


async def _all_acked(bus: Bus) -> bool:
    info = await bus.js.consumer_info(events_stream_name(bus.settings), NOTIFIER_DURABLE)
    return (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) == 0


@pytest.mark.timeout(90)
async def test_a_notice_a_webhook_never_takes_is_dead_lettered_and_the_rest_go_on(
    bus: Bus, make_settings: MakeSettings, receiver: Receiver, secret_file: Path
) -> None:
    def answer(notice: dict[str, Any]) -> int:
        return {"cam0-busy": 503, "cam0-bad": 400}.get(notice["after"]["id"], 200)

    receiver.answer = answer
    letters: list[tuple[str, bytes]] = []

    async def on_letter(msg: Any) -> None:
        letters.append((msg.headers.get("Vigil-Reason", ""), msg.data))

    assert bus.nc is not None
    await bus.nc.subscribe(bus.subjects.dead_letter("notifier"), cb=on_letter)
    notifier = NotifierService(make_settings(NotifierSettings, **notifier_values(receiver, secret_file, notify_retries=2)))
    async with running(notifier, lambda s: s.bus.nc is not None):
        notices = Notices(bus, 0.0, Metrics("test_publisher"))
        for event_id in ("cam0-busy", "cam0-bad", "cam0-fine"):
            await notices.publish(stored_event(event_id, 100.0, state=EventState.CREATED, frames=1))
        await wait_for(lambda: len(letters) == 2 and len(receiver.accepted) == 1, 30, "two dead letters and one delivery")
        await wait_until(lambda: _all_acked(bus), 30, "every notice acked, the dead-lettered ones too")
    reasons = sorted(reason for reason, _ in letters)
    assert "webhook-0 gave up on new of event cam0-bad" in reasons[0] and "HTTP 400" in reasons[0]
    assert "(after" not in reasons[0]  # a 400 will not change: refused at once, not retried
    assert "cam0-busy" in reasons[1] and "HTTP 503" in reasons[1] and "(after 3 attempts)" in reasons[1]
    assert [r.notice["after"]["id"] for r in receiver.requests].count("cam0-busy") == 3
    assert receiver.accepted[0]["after"]["id"] == "cam0-fine"
    assert counter_value(notifier.m_given_up, destination="webhook-0") == 2
    assert {json.loads(data)["after"]["id"] for _, data in letters} == {"cam0-busy", "cam0-bad"}  # the notice itself


@pytest.mark.timeout(90)
async def test_mqtt_notices_wait_for_the_broker_and_reconnect_after_its_restart(
    bus: Bus, make_settings: MakeSettings, mosquitto: Mosquitto, unique: str
) -> None:
    settings = make_settings(
        NotifierSettings,
        mqtt_host="127.0.0.1",
        mqtt_port=mosquitto.port,
        mqtt_topic_prefix=unique,
        mqtt_timeout=1.0,
        notify_retries=50,
        notify_retry_initial=0.1,
        notify_retry_max=0.5,
    )
    mosquitto.stop()  # down when the notifier starts
    notices = Notices(bus, 0.0, Metrics("test_publisher"))
    async with running(NotifierService(settings), lambda s: s.bus.nc is not None) as notifier:
        await notices.publish(stored_event("cam0-early", 100.0, state=EventState.CREATED, frames=1))
        await wait_for(lambda: counter_value(notifier.m_retries, destination="mqtt") >= 3, 30, "attempts while it is away")
        assert notifier.mqtt is not None and not notifier.mqtt.connected
        await mosquitto.start()
        watch = MqttWatch(mosquitto.port, f"{unique}/events")
        watching = asyncio.create_task(watch.run())
        try:
            await wait_for(lambda: notifier.delivered_total == 1, 30, "the notice once the broker is up")
            mosquitto.stop()  # a broker restart: the notifier reconnects by itself
            await mosquitto.start()
            await wait_for(lambda: notifier.mqtt is not None and notifier.mqtt.connected, 30, "the reconnection")
            watching.cancel()
            watch = MqttWatch(mosquitto.port, f"{unique}/events")
            watching = asyncio.create_task(watch.run())
            await asyncio.wait_for(watch.ready.wait(), 10)
            await notices.publish(stored_event("cam0-late", 101.0, state=EventState.CREATED, frames=1))
            await wait_for(lambda: [n["after"]["id"] for n in watch.got] == ["cam0-late"], 30, "the notice after the restart")
        finally:
            watching.cancel()
    assert counter_value(notifier.m_retries, destination="mqtt") >= 2
    assert counter_value(notifier.m_given_up, destination="mqtt") == 0


@pytest.mark.timeout(30)
async def test_without_a_notifier_the_registrators_notices_cost_nothing(bus: Bus) -> None:
    notices = Notices(bus, 0.0, Metrics("test_publisher"))
    started = time.monotonic()
    for i in range(20):
        await notices.publish(stored_event(f"cam0-e{i}", 100.0, state=EventState.CREATED, frames=1))
    assert time.monotonic() - started < 2.0  # no EVENTS stream: dropped at once, never waited for
    assert counter_value(notices.m_unheard) == 20 and counter_value(notices.m_lost) == 0
