"""Who should hold which source (shared/leases.py), without servers; the leases themselves run on the
real Redis in tests/integration/test_registrator_scaling.py."""

from __future__ import annotations

from collections import Counter

from services.registrator.leases import plan_moves, rendezvous_owner

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
