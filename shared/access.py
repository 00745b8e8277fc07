"""Who may do what on NATS and Redis: one user per role, its permissions derived from the subjects, streams,
consumers and keys the role's code uses (shared/subjects.py, shared/keys.py), so subject_prefix is honoured.

nats-server's `authorization` block and Redis's ACL file are both rendered from here. A stream's owner may
create and update it; only a work queue's owner may delete it (it re-creates an old one, see Bus.ensure_stream).
Nobody else may delete a stream, and the users of a prefixed fleet cannot touch another prefix's subjects or keys
(those of the unprefixed fleet can read and write every `vigil:` key: give a shared Redis prefixed fleets only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from shared.credentials import inbox_prefix
from shared.keys import RedisKeys
from shared.notices import NOTIFIER_DURABLE, NoticeSubjects, events_stream_name
from shared.settings import VigilSettings
from shared.subjects import (
    ROUTER_CROPS_DURABLE,
    ROUTER_DURABLE,
    Subjects,
    frames_stream_name,
    results_stream_name,
    task_stream_name,
    worker_durable,
)

ADMIN = "admin"  # every permission: tests' fixtures and an operator's tools, never a service
_API = "$JS.API"


class Role(StrEnum):
    READER = "reader"
    ROUTER = "router"
    WORKER = "worker"
    REGISTRATOR = "registrator"
    API = "api"
    NOTIFIER = "notifier"


@dataclass(frozen=True)
class Access:
    """What one user may do: NATS subjects it may publish and subscribe to, and its Redis ACL rules."""

    nats_publish: tuple[str, ...]
    nats_subscribe: tuple[str, ...]
    redis_rules: tuple[str, ...]


ADMIN_ACCESS = Access(nats_publish=(">",), nats_subscribe=(">",), redis_rules=("~*", "&*", "+@all"))


class StorageKey(StrEnum):
    """A SeaweedFS signing key a service may hold, named by the setting that gives its file.

    The fourth key, the volume write key, is the servers' alone: the master signs each upload's token."""

    VOLUME_READ = "storage_read_key_file"
    FILER_WRITE = "filer_write_key_file"
    FILER_READ = "filer_read_key_file"


_STORAGE_KEYS: dict[Role, tuple[StorageKey, ...]] = {
    Role.READER: (),  # uploads with the token the master signs for each assigned batch of fids
    Role.ROUTER: (),  # touches no file
    Role.WORKER: (StorageKey.VOLUME_READ,),  # downloads frames
    # Downloads frames, stores proofs (clips, key frames) on the filer and deletes them when they expire.
    Role.REGISTRATOR: (StorageKey.VOLUME_READ, StorageKey.FILER_WRITE),
    Role.API: (StorageKey.FILER_READ,),  # streams clips and key frames
    Role.NOTIFIER: (),  # sends the records it is given, proofs' URLs and all: it fetches no file
}


def storage_keys(role: Role) -> tuple[StorageKey, ...]:
    """The SeaweedFS keys of a role: those it signs its own requests with, and no other."""
    return _STORAGE_KEYS[role]


def user_name(role: Role, settings: VigilSettings, model: str = "") -> str:
    """`reader`, `worker-<model>`; with a subject_prefix `<prefix>-reader`, so that prefixes sharing servers
    (test runs) get users of their own."""
    base = f"{role.value}-{model}" if model else role.value
    name = f"{settings.subject_prefix}-{base}" if settings.subject_prefix else base
    return name.replace(".", "_")


def fleet_access(settings: VigilSettings, tasks: Mapping[str, str]) -> dict[str, Access]:
    """The users of a fleet, by name: one per role, and one per model for the workers.

    `tasks` maps each model to its task subject (without prefix): the router may publish to those only."""
    users = {user_name(role, settings): role_access(role, settings, tasks) for role in Role if role is not Role.WORKER}
    for model in tasks:
        users[user_name(Role.WORKER, settings, model)] = role_access(Role.WORKER, settings, tasks, model)
    return users


def role_access(role: Role, settings: VigilSettings, tasks: Mapping[str, str], model: str = "") -> Access:
    s = Subjects.from_settings(settings)
    frames, results = frames_stream_name(settings), results_stream_name(settings)
    own_inbox = f"{inbox_prefix(user_name(role, settings, model))}.>"
    # Every writing role: its own keys and nothing that empties, reconfigures or stops the server.
    writer = (
        *_key_patterns(settings),
        *("resetchannels", "-@all", "+@read", "+@write", "+@connection", "+@scripting", "+@transaction", "-@dangerous"),
    )
    if role is Role.READER:
        return Access(
            nats_publish=(
                *_own_stream(frames),
                _api("CONSUMER.INFO", frames, ROUTER_DURABLE),  # the backlog gate: it waits for the router
                s.frames_all,
                s.source_status("*"),
                s.source_health("*"),
                s.dead_letter(role.value),
            ),
            nats_subscribe=(own_inbox,),
            redis_rules=writer,
        )
    if role is Role.ROUTER:
        return Access(
            nats_publish=(
                *_consume(frames, ROUTER_DURABLE),
                *_consume(results, ROUTER_CROPS_DURABLE),  # detection results that give crops (the cascade)
                *(s.task(subject) for subject in tasks.values()),
                *(_api("CONSUMER.INFO", task_stream_name(settings, m), worker_durable(m)) for m in tasks),
                s.routed("*"),
                s.dead_letter(role.value),
            ),
            nats_subscribe=(own_inbox, _max_deliveries(frames, ROUTER_DURABLE), _max_deliveries(results, ROUTER_CROPS_DURABLE)),
            redis_rules=writer,
        )
    if role is Role.WORKER:
        if model not in tasks:
            raise ValueError(f"no task subject for model {model!r}; known: {', '.join(sorted(tasks)) or 'none'}")
        stream, durable = task_stream_name(settings, model), worker_durable(model)
        return Access(
            nats_publish=(
                *_own_stream(stream),
                _api("STREAM.DELETE", stream),
                *_consume(stream, durable),
                s.results_all,
                s.dead_letter("worker"),
            ),
            nats_subscribe=(own_inbox, _max_deliveries(stream, durable)),
            redis_rules=writer,
        )
    if role is Role.REGISTRATOR:
        return Access(
            nats_publish=(
                *_own_stream(results),
                # One durable per source (registrator-results-<source>): a consumer name is one token, so the
                # permission names them all, which also lets this role bind the router's consumer of FRAMES.
                *_consume(results, "*"),
                _api("STREAM.MSG.GET", results),  # how old its oldest unacked result is (Bus.lag)
                _api("DIRECT.GET", results),
                *_consume(frames, "*"),
                _api("STREAM.INFO", frames),
                # The frame buffer is rebuilt through a short-lived consumer without a durable name.
                _api("CONSUMER.CREATE", frames),
                _api("CONSUMER.CREATE", frames, ">"),
                _api("CONSUMER.MSG.NEXT", frames, "*"),
                s.drained("*"),
                NoticeSubjects.from_settings(settings).event("*"),  # event notices, into the notifier's stream
                s.dead_letter(role.value),
            ),
            nats_subscribe=(
                own_inbox,
                _max_deliveries(results, "*"),
                _max_deliveries(frames, "*"),
            ),
            redis_rules=writer,
        )
    if role is Role.NOTIFIER:
        events = events_stream_name(settings)
        return Access(
            nats_publish=(*_own_stream(events), *_consume(events, NOTIFIER_DURABLE), s.dead_letter(role.value)),
            nats_subscribe=(own_inbox, _max_deliveries(events, NOTIFIER_DURABLE)),
            redis_rules=("resetchannels", "-@all"),  # no Redis at all: a login that can do nothing
        )
    # The api reads: no publish at all (so no JetStream API either), the live status subjects, read commands.
    return Access(
        nats_publish=(),
        nats_subscribe=(s.source_status_all, s.source_health_all),
        redis_rules=(*_key_patterns(settings), "resetchannels", "-@all", "+@read", "+@connection", "-@dangerous"),
    )


def _api(operation: str, *tokens: str) -> str:
    return ".".join((_API, operation, *tokens))


def _own_stream(stream: str) -> tuple[str, ...]:
    return tuple(_api(op, stream) for op in ("STREAM.CREATE", "STREAM.UPDATE", "STREAM.INFO"))


def _consume(stream: str, durable: str) -> tuple[str, ...]:
    """Create, bind to, pull from and ack a durable consumer (both the named and the legacy create subjects)."""
    return (
        _api("CONSUMER.DURABLE.CREATE", stream, durable),
        _api("CONSUMER.CREATE", stream, durable),
        _api("CONSUMER.CREATE", stream, durable, ">"),
        _api("CONSUMER.INFO", stream, durable),
        _api("CONSUMER.MSG.NEXT", stream, durable),
        f"$JS.ACK.{stream}.{durable}.>",
    )


def _max_deliveries(stream: str, durable: str) -> str:
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"


def _key_patterns(settings: VigilSettings) -> tuple[str, ...]:
    return tuple(f"~{pattern}" for pattern in RedisKeys(settings).acl_patterns)


# Rendering -------------------------------------------------------------------------------------


def nats_authorization(users: Iterable[tuple[str, str, Access]]) -> str:
    """nats-server's `authorization` block for (user, password, access) triples. NATS's config format reads
    JSON, and JSON quotes every string, so a `$` in a subject is never taken for a variable."""
    entries = [
        {
            "user": name,
            "password": password,
            "permissions": {
                # An empty allow list would allow everything: a role that publishes nothing is denied all.
                "publish": {"allow": list(access.nats_publish)} if access.nats_publish else {"deny": [">"]},
                "subscribe": {"allow": list(access.nats_subscribe)} if access.nats_subscribe else {"deny": [">"]},
            },
        }
        for name, password, access in users
    ]
    return json.dumps({"authorization": {"users": entries}}, indent=2) + "\n"


def redis_acl(users: Iterable[tuple[str, str, Access]]) -> str:
    """Redis's ACL file: the default user (no password) off, then one line per user.

    Off, nobody logs in as `default`, but Redis 7 replays the transactions and scripts of its append-only file
    as that user and checks its permissions at each EXEC (redis/redis#14541): without them it drops every
    event written by a script at the next start, silently. So `default` keeps every permission, and stays off."""
    lines = ["user default off resetchannels ~* &* +@all"]
    lines += [" ".join(("user", name, "on", f">{password}", *access.redis_rules)) for name, password, access in users]
    return "\n".join(lines) + "\n"
