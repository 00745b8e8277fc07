"""Schemathesis hooks (loaded by the CLI through SCHEMATHESIS_HOOKS): deserializers for the api's binary answers.

Without them Schemathesis skips the clip and key frame bodies ("missing deserializer"). With them a body is
only accepted once it is what it claims to be: the JPEG decodes to an image, and the MP4 opens in PyAV and
holds as many frames as its container declares and as the event's `clip_frames` says.
"""

from __future__ import annotations

import functools
import io
import json
import os
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import av
import cv2
import numpy as np
import schemathesis
from schemathesis import DeserializationContext, Response

# The api's token, when the run needs one: the deserializer asks the api for the event the clip belongs to.
TOKEN_ENV = "VIGIL_CONTRACT_TOKEN"


@schemathesis.deserializer("image/jpeg")
def jpeg(ctx: DeserializationContext, response: Response) -> Any:
    image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ValueError(f"the {len(response.content)}-byte body does not decode as a JPEG")
    return _as_schema_string(response)


@schemathesis.deserializer("video/mp4")
def mp4(ctx: DeserializationContext, response: Response) -> Any:
    if response.status_code == 206:  # a byte range is not a playable file; its bounds are what it must match
        first, last, size = _content_range(response.headers)
        if len(response.content) != last - first + 1 or last >= size:
            raise ValueError(f"{len(response.content)} bytes for Content-Range {first}-{last}/{size}")
        return _as_schema_string(response)
    declared, decoded = _frames(response.content)
    if declared != decoded:
        raise ValueError(f"the MP4 declares {declared} frames and decodes to {decoded}")
    if ctx.case is not None:
        expected = _event(response, str(ctx.case.path_parameters["event_id"]))["clip_frames"]
        if decoded != expected:
            raise ValueError(f"the MP4 holds {decoded} frames; the event says clip_frames={expected}")
    return _as_schema_string(response)


@functools.lru_cache(maxsize=64)
def _frames(clip: bytes) -> tuple[int, int]:
    """(frames the container declares, frames it decodes to). Cached by the bytes themselves: the runs ask
    for the same few clips hundreds of times, and decoding one is the slowest thing the suite does."""
    with av.open(io.BytesIO(clip), format="mp4") as container:
        stream = container.streams.video[0]
        return stream.frames, sum(1 for _ in container.decode(stream))


def _as_schema_string(response: Response) -> str:
    # The document describes raw bytes as a string of that media type; latin-1 maps each byte to one
    # character, so the value validated is the body itself.
    return response.content.decode("latin-1")


def _content_range(headers: dict[str, list[str]]) -> tuple[int, int, int]:
    value = next(v[0] for k, v in headers.items() if k.lower() == "content-range")
    unit, _, spec = value.partition(" ")
    span, _, size = spec.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes":
        raise ValueError(f"Content-Range {value!r} is not in bytes")
    return int(first), int(last), int(size)


def _event(response: Response, event_id: str) -> dict[str, Any]:
    origin = urlsplit(str(response.request.url))  # the api that answered the clip
    request = urllib.request.Request(f"{origin.scheme}://{origin.netloc}/api/v1/events/{event_id}")
    if token := os.environ.get(TOKEN_ENV):
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:  # the api under test, on loopback
        return json.loads(answer.read())
