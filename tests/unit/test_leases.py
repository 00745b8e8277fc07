"""Who should hold which source (shared/leases.py), without servers; the leases themselves run on the
real Redis in tests/integration/test_registrator_scaling.py."""

from __future__ import annotations

import fnmatch
from collections import Counter

from services.registrator.leases import assign, plan_moves
from shared.access import Role, fleet_access, user_name
from shared.keys import RedisKeys
from shared.settings import VigilSettings

SOURCES = {f"cam{i}" for i in range(200)}


def test_sources_spread_evenly_and_every_replica_agrees() -> None:
    replicas = ["reg-a", "reg-b", "reg-c"]
    owners = assign(SOURCES, replicas)
    assert owners == assign(sorted(SOURCES, reverse=True), list(reversed(replicas)))  # order does not matter
    assert sorted(Counter(owners.values()).values()) == [66, 67, 67]


def test_few_sources_are_never_piled_on_one_replica() -> None:
    """Plain hashing put 3 of 4 sources on one of two replicas for about half of all source names; the busiest
    replica holds the even share rounded up, whatever the names."""
    for first in range(0, 400, 4):
        names = [f"cam{i}" for i in range(first, first + 4)]
        assert sorted(Counter(assign(names, ["reg-1", "reg-2"]).values()).values()) == [2, 2], names
        assert max(Counter(assign(names, ["reg-1", "reg-2", "reg-3"]).values()).values()) == 2, names


def test_a_joining_replica_takes_about_its_share_from_the_others() -> None:
    before = assign(SOURCES, ["reg-a", "reg-b"])
    after = assign(SOURCES, ["reg-a", "reg-b", "reg-c"])
    moved = {s for s in SOURCES if before[s] != after[s]}
    to_c = {s for s in moved if after[s] == "reg-c"}
    assert len(to_c) in (66, 67) and len(moved) <= 70, len(moved)  # what reg-c takes is the least that can move


def test_a_new_source_moves_few_others() -> None:
    before = assign(SOURCES, ["reg-a", "reg-b", "reg-c"])
    after = assign(SOURCES | {"cam-new"}, ["reg-a", "reg-b", "reg-c"])
    assert sum(before[s] != after[s] for s in SOURCES) <= 3


def test_plans_take_what_the_assignment_gives_and_give_up_what_it_gives_away() -> None:
    held = set(SOURCES)  # alone: everything
    assert set(assign(SOURCES, ["reg-a"]).values()) == {"reg-a"}
    owners = assign(SOURCES, ["reg-a", "reg-b"])
    of_b = {s for s in SOURCES if owners[s] == "reg-b"}
    take, give_up = plan_moves("reg-a", ["reg-a", "reg-b"], SOURCES, held)
    assert take == [] and set(give_up) == of_b and len(of_b) == 100
    take, give_up = plan_moves("reg-b", ["reg-a", "reg-b"], SOURCES, set())
    assert set(take) == of_b and give_up == []
    # A replica whose own heartbeat is not in the list yet still plans as a live one.
    assert plan_moves("reg-a", [], {"cam0"}, set()) == (["cam0"], [])
    # A held source the streams do not show (yet) stays where it is.
    assert plan_moves("reg-a", ["reg-a", "reg-b"], set(), {"cam0"}) == ([], [])


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
