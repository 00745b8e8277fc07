import asyncio
import time

import pytest

from fleet.clients import connect_nats
from shared.bus import Bus, ConsumerLag, Outgoing, fetch
from shared.contracts import FrameRef
from shared.metrics import Metrics, counter_value
from shared.retry import InfrastructureUnavailable
from shared.settings import VigilSettings
from shared.subjects import frames_stream
from tests.support.settings import settings_from


def make_bus(env: dict[str, str], service: str = "test") -> Bus:
    return Bus(settings_from(VigilSettings, env), service, "i1", Metrics(service))


def frame(seq: int) -> FrameRef:
    return FrameRef(source_id="cam0", seq=seq, pts=seq / 10, wall_time=0, url="http://127.0.0.1/x", width=2, height=2)


async def test_streams_are_created_once_and_updated_in_place(bus: Bus) -> None:
    config = frames_stream(bus.settings)
    await bus.ensure_stream(config)
    await bus.ensure_stream(config)  # a second replica starting: no error
    config.max_msgs = 1234
    await bus.ensure_stream(config)
    info = await bus.js.stream_info(config.name)
    assert info.config.max_msgs == 1234
    assert set(info.config.subjects) == {bus.subjects.frames_all, bus.subjects.source_status_all}


async def test_typed_publish_and_durable_pull(bus: Bus) -> None:
    stream = frames_stream(bus.settings)
    await bus.ensure_stream(stream)
    for seq in range(3):
        await bus.publish(bus.subjects.frames("cam0"), frame(seq))
    sub = await bus.durable_pull(stream.name, "reader-test")
    msgs = await fetch(sub, 10, timeout=2)
    decoded = [await bus.decode(m, FrameRef) for m in msgs]
    assert [f.seq for f in decoded if f] == [0, 1, 2]
    for m in msgs:
        await m.ack_sync()  # acked and confirmed, so the backlog below is exact
    assert await bus.backlog(stream.name, "reader-test") == 0
    assert await bus.backlog(stream.name, "no-such-consumer") == 0


async def test_a_re_publish_is_stored_once(bus: Bus) -> None:
    stream = frames_stream(bus.settings)
    await bus.ensure_stream(stream)
    same = [Outgoing.of(bus.subjects.frames("cam0"), frame(1)) for _ in range(3)]  # as publish_many's retry sends it
    assert await bus.publish_many([*same, Outgoing.of(bus.subjects.frames("cam0"), frame(2))]) == [None] * 4
    await bus.publish(bus.subjects.frames("cam0"), frame(1))
    assert (await bus.js.stream_info(stream.name)).state.messages == 2


async def test_lag_says_how_many_wait_and_since_when(bus: Bus) -> None:
    stream = frames_stream(bus.settings)
    await bus.ensure_stream(stream)
    sub = await bus.durable_pull(stream.name, "lagging")
    assert await bus.lag(stream.name, "lagging") == ConsumerLag(0, 0.0)
    for seq in range(5):
        await bus.publish(bus.subjects.frames("cam0"), frame(seq))
    await asyncio.sleep(1.5)
    first = await fetch(sub, 2, timeout=2)
    await first[0].ack_sync()  # one absorbed; the second held unacked still counts, and is now the oldest
    lag = await bus.lag(stream.name, "lagging")
    assert lag.pending == 4
    assert 1.5 <= lag.oldest_age < 30
    for m in [first[1], *await fetch(sub, 10, timeout=2)]:
        await m.ack_sync()
    assert (await bus.lag(stream.name, "lagging")).pending == 0


async def test_malformed_message_is_dead_lettered_and_counted(service_env: dict[str, str]) -> None:
    bus = make_bus(service_env, "victim")
    await bus.connect()
    watcher = await connect_nats(service_env)
    try:
        dlq = await watcher.subscribe(bus.subjects.dead_letter("victim"))
        stream = frames_stream(bus.settings)
        await bus.ensure_stream(stream)
        await bus.js.publish(bus.subjects.frames("cam0"), b'{"v": 1, "source_id": "cam0"}')
        await bus.publish(bus.subjects.frames("cam0"), frame(7))
        sub = await bus.durable_pull(stream.name, "dlq-test")
        msgs = await fetch(sub, 10, timeout=2)
        decoded = [await bus.decode(m, FrameRef) for m in msgs]
        assert decoded[0] is None and decoded[1] is not None and decoded[1].seq == 7
        letter = await dlq.next_msg(timeout=2)
        assert letter.data.startswith(b'{"v": 1') and "FrameRef" in letter.headers["Vigil-Reason"]
        assert counter_value(bus.dead_letters, subject=bus.subjects.frames("cam0")) == 1
    finally:
        await watcher.close()
        await bus.close()


async def test_consumer_waits_for_a_stream_until_its_owner_creates_it(service_env: dict[str, str]) -> None:
    owner, consumer = make_bus(service_env, "owner"), make_bus(service_env, "consumer")
    await owner.connect()
    await consumer.connect()
    stop = asyncio.Event()
    try:
        stream = frames_stream(owner.settings)
        binding = asyncio.create_task(consumer.bind_when_ready(stream.name, "late", stop))
        await asyncio.sleep(1.0)
        assert not binding.done()
        await owner.ensure_stream(stream)
        assert await asyncio.wait_for(binding, 5) is not None
        stop.set()
        assert await consumer.bind_when_ready("NO_SUCH_STREAM", "x", stop) is None
    finally:
        await owner.close()
        await consumer.close()


async def test_unreachable_nats_gives_a_clear_error_after_the_startup_timeout() -> None:
    bus = make_bus({"nats_host": "nats://127.0.0.1:1", "startup_timeout": "1.5"})
    started = time.monotonic()
    with pytest.raises(InfrastructureUnavailable, match="NATS unreachable after 2 s"):
        await bus.connect()
    assert 1.4 < time.monotonic() - started < 15  # it waited and retried, then gave up (not at once, not never)
