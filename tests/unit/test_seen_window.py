"""The registrator's seen window (services/registrator/window.py): redeliveries told apart in bounded space."""

from __future__ import annotations

import random

import pytest

from services.registrator.window import Seen, SeenWindow


def test_a_redelivery_inside_the_window_is_a_duplicate() -> None:
    window = SeenWindow(64)
    assert [window.add(s) for s in (3, 1, 2, 3, 1)] == [Seen.NEW, Seen.NEW, Seen.NEW, Seen.DUPLICATE, Seen.DUPLICATE]
    assert window.count == 3 and 2 in window and 0 not in window and 64 not in window


def test_the_window_slides_and_forgets_what_fell_behind() -> None:
    window = SeenWindow(64)
    for seq in range(0, 200, 2):  # every other frame (the router skips some)
        assert window.add(seq) is Seen.NEW
    assert window.watermark == 198 - 64 + 1 and window.count == 100
    assert window.add(199) is Seen.NEW  # a straggler still inside: counted
    assert window.add(137) is Seen.NEW  # inside, never seen (a hole the slide must have cleared, not kept)
    assert window.add(134) is Seen.PAST  # behind the watermark: taken for seen
    assert window.add(10_000) is Seen.NEW and window.watermark == 10_000 - 63
    assert all(s not in window for s in range(window.watermark, 10_000))  # a jump clears every bit
    assert len(window.to_bytes()) == 24 + 64 // 8  # the same size whatever the run's length


def test_it_agrees_with_a_set_under_disorder_and_redelivery() -> None:
    """Results a little out of order, some twice: the window says what an unbounded set would."""
    rng = random.Random(11)
    arrivals = [seq + rng.randrange(0, 40) for seq in range(5000)]  # seq, jittered by up to 40 frames
    order = sorted(range(5000), key=lambda i: arrivals[i])
    order += rng.sample(order, 500)  # redelivered
    window, seen = SeenWindow(128), set()
    for seq in order:
        new = seq not in seen
        seen.add(seq)
        verdict = window.add(seq)
        assert (verdict is Seen.NEW) == new, (seq, verdict)  # a copy is DUPLICATE, or PAST once far behind
    assert window.count == len(seen) == 5000


def test_a_window_survives_a_round_trip_and_a_seen_set_becomes_one() -> None:
    window = SeenWindow(64)
    for seq in (5, 70, 71, 90):
        window.add(seq)
    again = SeenWindow.from_bytes(window.to_bytes())
    assert (again.watermark, again.count) == (window.watermark, window.count) == (27, 4)
    assert [s in again for s in (5, 70, 71, 72, 90)] == [True, True, True, False, True]
    assert again.add(71) is Seen.DUPLICATE
    old = SeenWindow.of(64, {0, 1, 2, 500, 501})  # a seen set of an older version, read at restart
    assert old.count == 5 and old.add(501) is Seen.DUPLICATE and old.add(499) is Seen.NEW


def test_a_window_needs_whole_bytes() -> None:
    with pytest.raises(ValueError, match="not a multiple of 8"):
        SeenWindow(100)
