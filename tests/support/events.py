"""Event records for tests that store, list or remove them without a fleet: one person seen in cam0 for one frame,
with whatever a test cares about changed."""

from __future__ import annotations

from typing import Any

from shared.contracts import Event, EventState


def stored_event(event_id: str, start_wall: float, *, label: str = "person", **changes: Any) -> Event:
    fields: dict[str, Any] = {
        "id": event_id,
        "source_id": "cam0",
        "model": "ssd",
        "label": label,
        "label_counts": {label: 1},
        "state": EventState.CREATED,
        "start": 0.0,
        "end": 1.0,
        "start_wall": start_wall,
        "frames": 1,
        "best_score": 0.9,
        "best_frame_seq": 0,
        "updated_at": start_wall,
    }
    return Event(**(fields | changes))
