"""Who should hold which source (shared/leases.py), without servers; the leases themselves run on the
real Redis in tests/integration/test_registrator_scaling.py."""

from __future__ import annotations

import fnmatch
from collections import Counter

from services.registrator.leases import plan_moves, rendezvous_owner
from shared.access import Role, fleet_access, user_name
from shared.keys import RedisKeys
from shared.settings import VigilSettings

SOURCES = {f"cam{i}" for i in range(200)}


def test_sources_spread_evenly_and_every_replica_agrees() -> None:
    replicas = ["reg-a", "reg-b", "reg-c"]
    owners = {s: rendezvous_owner(s, replicas) for s in SOURCES}
    assert owners == {s: rendezvous_owner(s, list(reversed(replicas))) for s in SOURCES}  # order does not matter
    shares = Counter(owners.values())
    assert set(shares) == set(replicas) and all(45 <= n <= 90 for n in shares.values()), shares


def test_a_joining_replica_takes_only_its_share_from_the_others() -> None:
    before = {s: rendezvous_owner(s, ["reg-a", "reg-b"]) for s in SOURCES}
    after = {s: rendezvous_owner(s, ["reg-a", "reg-b", "reg-c"]) for s in SOURCES}
    moved = {s for s in SOURCES if before[s] != after[s]}
    assert moved and all(after[s] == "reg-c" for s in moved)  # nothing moves between the two that stayed


def test_plans_take_what_hashing_gives_and_give_up_what_it_gives_away() -> None:
    held = {s for s in SOURCES if rendezvous_owner(s, ["reg-a"]) == "reg-a"}  # alone: everything
    assert held == SOURCES
    take, give_up = plan_moves("reg-a", ["reg-a", "reg-b"], SOURCES, held)
    assert take == [] and set(give_up) == {s for s in SOURCES if rendezvous_owner(s, ["reg-a", "reg-b"]) == "reg-b"}
    take, give_up = plan_moves("reg-b", ["reg-a", "reg-b"], SOURCES, set())
    assert set(take) == set(give_up_of_a := {s for s in SOURCES if rendezvous_owner(s, ["reg-a", "reg-b"]) == "reg-b"})
    assert give_up == [] and give_up_of_a
    # A replica whose own heartbeat is not in the list yet still plans as a live one.
    assert plan_moves("reg-a", [], {"cam0"}, set()) == (["cam0"], [])


def test_the_readers_redis_login_reaches_its_lease_keys_and_scripts() -> None:
    """Readers share sources by the same leases (services/reader/service.py): their ACL must allow the keys and Lua."""
    settings = VigilSettings.model_validate({"subject_prefix": "site1"})
    keys = RedisKeys(settings)
    rules = fleet_access(settings, {}).get(user_name(Role.READER, settings))
    assert rules is not None
    patterns = [rule[1:] for rule in rules.redis_rules if rule.startswith("~")]
    for key in (keys.leases_replicas("reader"), keys.lease("reader", "cam0"), keys.lease_tokens("reader")):
        assert any(fnmatch.fnmatchcase(key, p) for p in patterns), (key, patterns)
    assert {"+@write", "+@scripting", "+@transaction"} <= set(rules.redis_rules)
    # The registrator's keys keep their deployed names.
    plain = RedisKeys(VigilSettings())
    assert (plain.leases_replicas("registrator"), plain.lease("registrator", "cam0"), plain.lease_tokens("registrator")) == (
        "vigil:registrator:replicas",
        "vigil:registrator:lease:cam0",
        "vigil:registrator:lease-tokens",
    )
