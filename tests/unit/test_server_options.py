"""LocalServers' options are checked before anything starts, with a message that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.servers import LocalServers, default_go_maxprocs, go_server_env


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"volume_servers": 0}, "volume_servers must be 1 or more"),
        ({"volume_servers": 2, "replication": "1"}, "three digits xyz"),
        ({"volume_servers": 2, "replication": "002"}, "needs volume_servers=3 or more"),
        ({"replication": "001"}, "needs volume_servers=2 or more"),
        ({"go_maxprocs": -1}, "go_maxprocs must be 0"),
    ],
)
def test_bad_seaweedfs_options_are_refused(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalServers(tmp_path, **options)  # type: ignore[arg-type]


def test_two_volume_servers_replicate_by_default(tmp_path: Path) -> None:
    assert LocalServers(tmp_path, volume_servers=2)._replication == "001"
    assert LocalServers(tmp_path)._replication == ""


def test_go_servers_get_one_scheduler_slot_on_a_small_machine_only() -> None:
    assert default_go_maxprocs(1) == default_go_maxprocs(2) == 1
    assert default_go_maxprocs(4) == default_go_maxprocs(64) == 0  # Go's own: one per core


def test_a_gomaxprocs_of_our_own_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOMAXPROCS", "3")
    assert go_server_env(1) == {}  # the servers inherit our 3
    monkeypatch.delenv("GOMAXPROCS")
    assert go_server_env(1) == {"GOMAXPROCS": "1"}
    assert go_server_env(0) == {}
