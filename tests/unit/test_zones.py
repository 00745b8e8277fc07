"""Zones and lines: settings that say what is wrong, point in polygon by the feet, crossings by direction."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.registrator.settings import RegistratorSettings
from services.registrator.zones import Line, SourceGeometry, SourceZones, Zone, inside
from shared.contracts import BBox

SQUARE = [(0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)]


def test_point_in_polygon() -> None:
    assert inside((0.4, 0.4), SQUARE)
    assert not inside((0.1, 0.4), SQUARE) and not inside((0.4, 0.7), SQUARE)
    triangle = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    assert inside((0.2, 0.2), triangle) and not inside((0.6, 0.6), triangle)


def test_an_object_is_in_a_zone_by_the_bottom_centre_of_its_box() -> None:
    zone = Zone("floor", SQUARE)
    # The head inside, the feet below the zone: not in it. The head above, the feet inside: in it.
    assert not zone.holds(BBox(x1=0.3, y1=0.3, x2=0.5, y2=0.8))
    assert zone.holds(BBox(x1=0.3, y1=0.0, x2=0.5, y2=0.5))


def test_line_crossings_count_in_and_out_over_the_segment_only() -> None:
    line = Line("door", (0.5, 0.2), (0.5, 0.8), "right")  # drawn downwards: its right is the frame's left
    assert line.crossing((0.6, 0.5), (0.4, 0.5)) == "in"
    assert line.crossing((0.4, 0.5), (0.6, 0.5)) == "out"
    assert line.crossing((0.4, 0.9), (0.6, 0.9)) is None  # past the end of the segment
    assert line.crossing((0.4, 0.5), (0.45, 0.5)) is None  # same side
    flipped = Line("door", (0.5, 0.2), (0.5, 0.8), "left")
    assert flipped.crossing((0.4, 0.5), (0.6, 0.5)) == "in"
    geometry = SourceGeometry(lines=(line, flipped))
    assert geometry.crossings((0.4, 0.5), (0.6, 0.5)) == [("door", "out"), ("door", "in")]


def test_settings_take_frigate_strings_and_pairs() -> None:
    zones = SourceZones.model_validate(
        {"zones": {"drive": {"points": "0.1,0.5,0.4,0.5,0.4,1,0.1,1"}}, "lines": {"gate": {"points": [[0.5, 0], [0.5, 1]]}}}
    )
    assert zones.zones["drive"].points == [(0.1, 0.5), (0.4, 0.5), (0.4, 1.0), (0.1, 1.0)]
    geometry = SourceGeometry.from_settings(zones)
    assert [z.name for z in geometry.zones] == ["drive"] and geometry.lines[0].a == (0.5, 0.0)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"zones": {"drive": {"points": "0.1,0.5,0.4,0.5"}}}, "zone 'drive' has 2 point(s); it needs at least 3"),
        (
            {"zones": {"drive": {"points": [[0.1, 0.5], [640, 0.5], [0.4, 1]]}}},
            "zone 'drive': point 2 (640, 0.5) is outside 0..1",
        ),
        ({"zones": {"drive": {"points": "0.1,0.5,0.4"}}}, "odd count of numbers"),
        ({"lines": {"gate": {"points": [[0.5, 0], [0.5, 1], [0.2, 0.2]]}}}, "line 'gate' has 3 point(s); it needs exactly 2"),
        ({"zones": {"a b": {"points": SQUARE}}}, "zone name 'a b'"),
        ({"zones": {"drive": {"points": SQUARE, "colour": "red"}}}, "colour"),
    ],
)
def test_bad_zones_are_refused_with_their_name(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SourceZones.model_validate(doc)
    assert message in str(caught.value)


def test_rules_may_only_name_zones_that_exist() -> None:
    zones = {"cam1": {"zones": {"drive": {"points": SQUARE}}}}
    ok = RegistratorSettings.model_validate({"zones": zones, "event_rules": {"ssd": {"require_zones": ["drive"]}}})
    assert ok.event_rules["ssd"].require_zones == ["drive"] and ok.event_mode == "object"
    with pytest.raises(ValidationError, match="exclude_zones names zone 'street', which no source defines"):
        RegistratorSettings.model_validate({"zones": zones, "event_rules": {"ssd": {"exclude_zones": ["street"]}}})
