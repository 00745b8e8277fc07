"""Choosing the index a filtered listing walks (shared/event_store.py), and the keys' place in the roles' ACLs."""

from __future__ import annotations

import fnmatch

import pytest

from services.api.queries import EventFilter
from shared.access import Role, role_access
from shared.contracts import EventState
from shared.event_store import INDEXED, index_entries, narrowest
from shared.keys import RedisKeys
from shared.settings import VigilSettings
from tests.support.events import stored_event


def test_the_narrowest_index_is_walked() -> None:
    assert narrowest({"source": 900, "label": 40, "state": 5000}) == "label"
    assert narrowest({"source": 0, "label": 3}) == "source"  # an empty index: an empty page, read at once
    assert narrowest({"state": 7, "label": 7}) == "state"  # a tie: the first named
    with pytest.raises(ValueError, match="without filters walks the records"):
        narrowest({})


def test_only_the_indexed_filters_pick_an_index() -> None:
    assert EventFilter(since=1.0, until=2.0).indexed() == {}
    where = EventFilter(source_id="cam1", label="traffic light", state=EventState.ERROR, since=5.0)
    assert where.indexed() == {"source": "cam1", "label": "traffic light", "state": "ERROR"}
    every = EventFilter(source_id="cam1", label="car", state=EventState.DONE, zone="drive", sub_label="cab", stationary=False)
    assert every.indexed() == {
        "source": "cam1",
        "label": "car",
        "state": "DONE",
        "zone": "drive",
        "sub_label": "cab",
        "stationary": "false",  # false is a filter too, not the absence of one
    }
    assert set(every.indexed()) == set(INDEXED)
    assert EventFilter(stationary=True).indexed() == {"stationary": "true"}


def test_an_event_is_in_one_index_per_zone_and_in_a_sub_label_index_only_with_one() -> None:
    scene = stored_event("e1", 1.0)
    assert index_entries(scene) == [("source", "cam0"), ("label", "person"), ("state", "CREATED"), ("stationary", "false")]
    parked = stored_event("e2", 1.0, label="car", zones=["drive", "street"], sub_label="minivan", stationary=True)
    assert set(index_entries(parked)) - set(index_entries(scene)) >= {
        ("zone", "drive"),
        ("zone", "street"),
        ("sub_label", "minivan"),
        ("stationary", "true"),
    }
    assert {field for field, _ in index_entries(parked)} == set(INDEXED)


@pytest.mark.parametrize("prefix", ["", "site1"])
def test_the_registrator_writes_the_indexes_and_the_api_only_reads_them(prefix: str) -> None:
    settings = VigilSettings.model_validate({"subject_prefix": prefix} if prefix else {})
    keys = RedisKeys(settings)
    new_keys = [keys.events_by("label", "traffic light"), keys.events_by("state", "FINISHED"), keys.events_stored_bytes]
    new_keys += [keys.events_by("zone", "drive"), keys.events_by("sub_label", "police van"), keys.events_by("stationary", "true")]
    new_keys.append(keys.events_indexed)
    for role in (Role.REGISTRATOR, Role.API):
        rules = role_access(role, settings, {}).redis_rules
        patterns = [rule[1:] for rule in rules if rule.startswith("~")]
        for key in new_keys:
            assert any(fnmatch.fnmatchcase(key, p) for p in patterns), (role, key)
    assert "+@write" in role_access(Role.REGISTRATOR, settings, {}).redis_rules
    assert "+@write" not in role_access(Role.API, settings, {}).redis_rules
