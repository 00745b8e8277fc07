import pytest
from pydantic import ValidationError

from services.router.rules import ModelRule, RoutingRules
from services.router.settings import RouterSettings
from shared.contracts import FrameRef
from tests.support.settings import settings_from


def frame(seq: int, source: str = "cam0", fps: float = 10.0) -> FrameRef:
    return FrameRef(source_id=source, seq=seq, pts=seq / fps, wall_time=0, url="http://h/1", width=2, height=2)


def test_unnamed_models_see_every_frame() -> None:
    rules = RoutingRules({})
    assert all(rules.wants("any", frame(i)) for i in range(10))


def test_sources_every_nth_and_max_fps() -> None:
    rules = RoutingRules(
        {
            "gate-only": ModelRule(sources=["gate"]),
            "fifth": ModelRule(every_nth=5),
            "two-per-second": ModelRule(max_fps=2),
        }
    )
    assert rules.wants("gate-only", frame(0, "gate")) and not rules.wants("gate-only", frame(0, "yard"))
    assert [i for i in range(20) if rules.wants("fifth", frame(i))] == [0, 5, 10, 15]
    kept = [i for i in range(50) if rules.wants("two-per-second", frame(i, fps=25))]  # 2 s of a 25 fps source
    assert len(kept) == 4 and kept[:2] == [0, 13]  # 0, 0.52, 1.0, 1.52 s: the schedule does not drift
    # each source has its own schedule
    assert rules.wants("two-per-second", frame(0, "other", fps=25))


def test_rules_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTING_RULES", '{"efficientnet_lite0": {"every_nth": 5, "sources": ["cam1"]}}')
    settings = settings_from(RouterSettings)
    assert settings.routing_rules["efficientnet_lite0"] == ModelRule(every_nth=5, sources=["cam1"])
    monkeypatch.setenv("ROUTING_RULES", '{"m": {"every_nth": 0}}')
    with pytest.raises(ValidationError):
        settings_from(RouterSettings)
