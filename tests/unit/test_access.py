"""The role permissions (shared/access.py) and the credentials files (shared/credentials.py), without servers;
tests/integration/test_attacks.py tries them on the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.access import ADMIN, ADMIN_ACCESS, Role, fleet_access, nats_authorization, redis_acl, user_name
from shared.credentials import CredentialsError, nats_login, redis_login
from shared.settings import VigilSettings

TASKS = {"ssd": "DetectionInference", "effnet": "ClassificationInference"}


def settings(**values: str) -> VigilSettings:
    return VigilSettings.model_validate(values)


def test_every_subject_and_stream_carries_the_prefix() -> None:
    users = fleet_access(settings(subject_prefix="site1"), TASKS)
    assert set(users) == {
        "site1-reader",
        "site1-router",
        "site1-registrator",
        "site1-api",
        "site1-worker-ssd",
        "site1-worker-effnet",
        "site1-notifier",
    }
    for access in users.values():
        for subject in (*access.nats_publish, *access.nats_subscribe):
            assert "site1" in subject.lower(), subject
        assert all("site1" in rule for rule in access.redis_rules if rule.startswith("~"))


def test_only_a_worker_publishes_results_and_only_its_own_queue_is_deletable() -> None:
    s = settings()
    users = fleet_access(s, TASKS)
    publishers = {name for name, access in users.items() if "inference.results.*" in access.nats_publish}
    assert publishers == {"worker-ssd", "worker-effnet"}
    deletes = {name: [p for p in a.nats_publish if ".STREAM.DELETE." in p] for name, a in users.items()}
    assert deletes["worker-ssd"] == ["$JS.API.STREAM.DELETE.TASKS_SSD"]
    assert all(not d for name, d in deletes.items() if not name.startswith("worker-"))
    assert users["api"].nats_publish == ()
    assert "+@write" not in users["api"].redis_rules


def test_only_the_registrator_publishes_notices_and_the_notifier_touches_nothing_else() -> None:
    users = fleet_access(settings(), TASKS)
    publishers = {name for name, access in users.items() if "vigil.events.*" in access.nats_publish}
    assert publishers == {"registrator"}
    notifier = users["notifier"]
    assert set(notifier.nats_publish) == {
        "$JS.API.STREAM.CREATE.EVENTS",
        "$JS.API.STREAM.UPDATE.EVENTS",
        "$JS.API.STREAM.INFO.EVENTS",
        "$JS.API.CONSUMER.DURABLE.CREATE.EVENTS.notifier",
        "$JS.API.CONSUMER.CREATE.EVENTS.notifier",
        "$JS.API.CONSUMER.CREATE.EVENTS.notifier.>",
        "$JS.API.CONSUMER.INFO.EVENTS.notifier",
        "$JS.API.CONSUMER.MSG.NEXT.EVENTS.notifier",
        "$JS.ACK.EVENTS.notifier.>",
        "vigil.dlq.notifier",
    }
    assert notifier.redis_rules == ("resetchannels", "-@all")  # it has no business in Redis


def test_rendered_configuration_denies_what_a_role_does_not_list() -> None:
    users = fleet_access(settings(), TASKS)
    config = json.loads(nats_authorization([("api", "pw", users["api"]), (ADMIN, "pw2", ADMIN_ACCESS)]))
    api, admin = config["authorization"]["users"]
    # An empty allow list would allow everything.
    assert api["permissions"]["publish"] == {"deny": [">"]}
    assert admin["permissions"]["publish"] == {"allow": [">"]}
    acl = redis_acl([("api", "pw", users["api"])]).splitlines()
    # Off, so nobody logs in as it; with every permission, so Redis 7 replays the scripts of its AOF as it.
    assert acl[0] == "user default off resetchannels ~* &* +@all"
    assert acl[1].startswith("user api on >pw ")


def test_a_worker_needs_its_model_known() -> None:
    from shared.access import role_access

    with pytest.raises(ValueError, match="no task subject for model 'yolo'"):
        role_access(Role.WORKER, settings(), TASKS, "yolo")
    assert user_name(Role.WORKER, settings(subject_prefix="a.b"), "ssd") == "a_b-worker-ssd"


def test_passwords_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "reader.password"
    secret.write_text("s3cret:with@odd%40chars\n")
    s = settings(nats_user="reader", nats_password_file=str(secret), redis_user="reader", redis_password_file=str(secret))
    assert nats_login(s) == {"user": "reader", "password": "s3cret:with@odd%40chars", "inbox_prefix": "_INBOX.reader"}
    assert redis_login(s) == {"username": "reader", "password": "s3cret:with@odd%40chars"}
    assert "s3cret" not in repr(s)  # only the path is a setting
    assert nats_login(settings()) == {} and redis_login(settings()) == {}


def test_a_missing_or_empty_password_file_names_the_setting(tmp_path: Path) -> None:
    missing = settings(nats_user="reader", nats_password_file=str(tmp_path / "nope"))
    with pytest.raises(CredentialsError, match=r"cannot read nats_password_file .*create it or fix nats_password_file"):
        nats_login(missing)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialsError, match=r"redis_password_file .* is empty"):
        redis_login(settings(redis_user="api", redis_password_file=str(tmp_path / "empty")))


def test_bad_user_settings_are_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="nats_password_file is set but nats_user is empty"):
        settings(nats_password_file="x")
    with pytest.raises(ValidationError, match="letters, digits"):
        settings(nats_user="a.b")
