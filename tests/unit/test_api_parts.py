"""The api's pure parts: Range parsing and page cursors."""

import pytest

from services.api.queries import Cursor
from services.api.ranges import UnsatisfiableRange, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("", 100, None),
        ("bytes=0-0", 100, (0, 0)),
        ("bytes=10-19", 100, (10, 19)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=90-500", 100, (90, 99)),  # a last byte past the end is cut to the end
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=0-5, 10-15", 100, None),  # several ranges: the whole body is a valid answer
    ],
)
def test_ranges(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=20-10", "bytes=-0", "bytes=-", "items=0-5", "bytes=a-b"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(UnsatisfiableRange):
        parse_range(header, 100)


def test_cursor_round_trip_and_order() -> None:
    cursor = Cursor(1795827495.6099188, "cam0-person-abc_def")
    assert Cursor.decode(cursor.encode()) == cursor
    for bad in ("", "abc", "12.5", "_id", "nan_x"):
        with pytest.raises(ValueError):
            Cursor.decode(bad)
