"""LocalServers' SeaweedFS options are checked before anything starts, with a message that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.servers import LocalServers


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"volume_servers": 0}, "volume_servers must be 1 or more"),
        ({"volume_servers": 2, "replication": "1"}, "three digits xyz"),
        ({"volume_servers": 2, "replication": "002"}, "needs volume_servers=3 or more"),
        ({"replication": "001"}, "needs volume_servers=2 or more"),
    ],
)
def test_bad_seaweedfs_options_are_refused(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalServers(tmp_path, **options)  # type: ignore[arg-type]


def test_two_volume_servers_replicate_by_default(tmp_path: Path) -> None:
    assert LocalServers(tmp_path, volume_servers=2)._replication == "001"
    assert LocalServers(tmp_path)._replication == ""
