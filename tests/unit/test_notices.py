"""Event notices without I/O: which record makes which notice, which destination wants it, the signature, and the
notifier's settings refusing what cannot work."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleet.run import wants_notifier
from services.notifier.senders import signature
from services.notifier.settings import NoticeRule, NotifierSettings
from services.registrator.notices import NoticeFilter
from shared.contracts import ContractError, EventState
from shared.notices import EventNotice, NoticeSubjects, NoticeType, events_stream, events_stream_name
from shared.settings import VigilSettings
from tests.support.events import stored_event
from tests.support.settings import settings_from


def test_an_events_life_is_new_then_throttled_updates_then_one_end() -> None:
    notices = NoticeFilter(update_interval=5.0)
    event = stored_event("cam0-a", 100.0, state=EventState.PENDING, frames=2)  # two results in one batch: PENDING at once
    first = notices.notice(event, now=0.0)
    assert first is not None and first.type is NoticeType.NEW and first.before is None
    assert notices.notice(event.model_copy(update={"frames": 3}), now=1.0) is None  # within the interval
    grown = event.model_copy(update={"frames": 9, "updated_at": 106.0})
    update = notices.notice(grown, now=6.0)
    assert update is not None and update.type is NoticeType.UPDATE and update.before == event and update.after == grown
    assert notices.notice(grown, now=20.0) is None  # nothing changed: nothing to say
    failed = grown.model_copy(update={"state": EventState.ERROR, "error": "storage away"})
    end = notices.notice(failed, now=21.0)
    assert end is not None and end.type is NoticeType.END and end.before == grown
    assert notices.notice(failed, now=22.0) is None  # a retry's ERROR again: the end was said
    finished = notices.notice(failed.model_copy(update={"state": EventState.FINISHED, "error": None}), now=30.0)
    assert finished is not None and finished.type is NoticeType.UPDATE  # proofs after all: said, but not a second end
    assert notices.open == 0


def test_a_state_change_is_an_update_and_the_end_needs_no_interval() -> None:
    notices = NoticeFilter(update_interval=0.0)
    event = stored_event("cam0-b", 100.0)
    assert [
        n.type if (n := notices.notice(event.model_copy(update=change), now=t)) else None
        for t, change in enumerate(
            [
                {},
                {"state": EventState.PENDING, "frames": 2},
                {"state": EventState.DONE, "frames": 2},
                {"state": EventState.FINISHED},
            ]
        )
    ] == [NoticeType.NEW, NoticeType.UPDATE, NoticeType.UPDATE, NoticeType.END]


def test_notice_ids_tell_transitions_apart_and_repeat_for_a_republish() -> None:
    event = stored_event("cam0-c", 100.0)
    new = EventNotice(type=NoticeType.NEW, source_id="cam0", after=event)
    assert new.msg_id() == EventNotice.from_bytes(new.to_bytes()).msg_id()
    assert new.msg_id() != EventNotice(type=NoticeType.END, source_id="cam0", after=event).msg_id()
    with pytest.raises(ContractError):
        EventNotice.from_bytes(b'{"v": 1, "type": "started", "source_id": "cam0", "after": {}}')


def test_subjects_and_stream_follow_the_prefix() -> None:
    plain, prefixed = VigilSettings(_env_file=None), VigilSettings(_env_file=None, subject_prefix="t1.a")  # type: ignore[call-arg]
    assert NoticeSubjects.from_settings(plain).event("cam0") == "vigil.events.cam0"
    assert NoticeSubjects.from_settings(prefixed).events_all == "t1.a.vigil.events.*"
    assert events_stream_name(plain) == "EVENTS" and events_stream_name(prefixed) == "T1_A_EVENTS"
    assert events_stream(prefixed).subjects == ["t1.a.vigil.events.*"]


@pytest.mark.parametrize(
    ("rule", "wanted"),
    [
        (NoticeRule(), True),
        (NoticeRule(sources=["cam1"]), False),
        (NoticeRule(labels=["person", "car"], types=[NoticeType.NEW]), True),
        (NoticeRule(labels=["car"]), False),
        (NoticeRule(types=[NoticeType.END]), False),
    ],
)
def test_a_rule_picks_by_source_label_and_type(rule: NoticeRule, wanted: bool) -> None:
    notice = EventNotice(type=NoticeType.NEW, source_id="cam0", after=stored_event("cam0-d", 100.0))
    assert rule.wants(notice) is wanted


def test_the_signature_is_the_hmac_of_the_exact_body() -> None:
    body = b'{"type":"new"}'
    assert signature(b"key", body) == "sha256=" + hmac.new(b"key", body, hashlib.sha256).hexdigest()
    assert signature(b"key", body + b" ") != signature(b"key", body)


def test_webhooks_need_a_signing_key_and_an_http_url(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="set it to a file holding the signing key"):
        settings_from(NotifierSettings, webhooks=[{"url": "https://hooks.example/x"}])
    with pytest.raises(ValidationError, match="is not an http:// or https:// URL"):
        settings_from(NotifierSettings, webhooks=[{"url": "ftp://user:pw@hooks.example/x"}], webhook_secret_file=tmp_path)
    with pytest.raises(ValidationError, match="without wildcards"):
        settings_from(NotifierSettings, mqtt_host="broker", mqtt_topic_prefix="vigil/#")
    hook = settings_from(
        NotifierSettings, webhooks=[{"url": "https://t:secret@hooks.example/abc?token=x"}], webhook_secret_file=tmp_path
    )
    assert hook.webhooks[0].host == "https://hooks.example:443"  # what logs show: no path, query or credentials
    assert hook.destinations == 1


def test_the_local_fleet_runs_the_notifier_only_with_a_destination(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    assert not wants_notifier(empty, {})
    assert wants_notifier(empty, {"mqtt_host": "broker.lan"})
    named = tmp_path / "hooks.env"
    named.write_text(f'webhooks=[{{"url": "https://hooks.example/x"}}]\nwebhook_secret_file={tmp_path}\n')
    assert wants_notifier(named, {})
    # Settings it cannot read start it all the same: it then stops with the reason, and the run says so.
    assert wants_notifier(empty, {"mqtt_port": "not-a-port", "mqtt_host": "broker.lan"})


def test_a_notifier_without_a_destination_stops_and_says_what_to_set(repo_root: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.notifier", "--env-file", os.devnull],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}},
    )
    assert done.returncode == 1, done.stderr
    assert "set webhooks (and webhook_secret_file) or mqtt_host" in done.stderr
