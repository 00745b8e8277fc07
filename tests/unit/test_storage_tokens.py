"""The tokens SeaweedStorage signs, and its signing keys read from files (no server: the claims alone)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from shared import jwt
from shared.credentials import CredentialsError
from shared.settings import VigilSettings
from shared.storage import TOKEN_SECONDS, SeaweedStorage
from tests.support.settings import settings_from

FILER = "http://127.0.0.1:8888"


def test_hs256_matches_a_known_token() -> None:
    # The example token of RFC 7519's common tooling (jwt.io), byte for byte.
    token = jwt.sign("your-256-bit-secret", {"sub": "1234567890", "name": "John Doe", "iat": 1516239022})
    assert token == (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
        ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
    assert jwt.unverified_claims(token)["name"] == "John Doe"
    assert jwt.unverified_claims("not a token") == {}


def keyed(tmp_path: Path, **files: str) -> VigilSettings:
    values: dict[str, Any] = {"filer_url": FILER}
    for setting, key in files.items():
        path = tmp_path / setting
        path.write_text(key + "\n")  # the final newline an editor adds is not part of the key
        values[setting] = str(path)
    return settings_from(VigilSettings, values)


def claims(header: dict[str, str], key: str) -> dict[str, Any]:
    token = header["Authorization"].removeprefix("Bearer ")
    got = jwt.unverified_claims(token)
    assert jwt.sign(key, got) == token, "not signed with that key"
    assert time.time() < got.pop("exp") <= time.time() + TOKEN_SECONDS
    return got


async def test_each_request_is_signed_with_its_key_and_scoped_to_it(tmp_path: Path) -> None:
    settings = keyed(tmp_path, storage_read_key_file="vr", filer_write_key_file="fw", filer_read_key_file="fr")
    async with SeaweedStorage(settings) as storage:
        # A frame of a batch: the volume server checks the fid without its `_<n>`.
        for url in ("http://127.0.0.1:8080/3,01637037d6", "http://127.0.0.1:8080/3,01637037d6_12"):
            assert claims(storage.authorization("GET", url), "vr") == {"fid": "3,01637037d6"}
        assert storage.authorization("DELETE", "http://127.0.0.1:8080/3,01637037d6") == {}  # the master's to sign
        clip = f"{FILER}/vigil/events/e1/e1.mp4"
        for method, key in (("GET", "fr"), ("HEAD", "fr"), ("POST", "fw"), ("DELETE", "fw")):
            got = claims(storage.authorization(method, clip), key)
            assert got == {"allowed_prefixes": ["/vigil/events/e1/e1.mp4"], "allowed_methods": [method]}


async def test_without_a_key_nothing_is_signed(tmp_path: Path) -> None:
    async with SeaweedStorage(keyed(tmp_path, filer_read_key_file="fr")) as api:  # the api's one key
        assert api.authorization("GET", "http://127.0.0.1:8080/3,01637037d6") == {}
        assert api.authorization("POST", f"{FILER}/vigil/events/e1/e1.mp4") == {}


@pytest.mark.parametrize("setting", ["storage_read_key_file", "filer_write_key_file", "filer_read_key_file"])
async def test_a_missing_or_empty_key_file_names_its_setting(tmp_path: Path, setting: str) -> None:
    with pytest.raises(CredentialsError, match=f"cannot read {setting} .*create it or fix {setting}"):
        async with SeaweedStorage(settings_from(VigilSettings, {setting: str(tmp_path / "nope")})):
            pass
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialsError, match=f"{setting} .* is empty; put the SeaweedFS key in it"):
        async with SeaweedStorage(settings_from(VigilSettings, {setting: str(tmp_path / "empty")})):
            pass


async def test_a_batch_whose_upload_token_runs_out_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The master's token for a batch lives WEED_TOKEN_SECONDS: a slow source must not upload with a dead one.
    assigns: list[int] = []

    async def assign(ttl: str) -> tuple[dict[str, Any], str]:
        assigns.append(len(assigns))
        expires = time.time() + (1 if len(assigns) == 1 else 60)  # the first batch's token is about to run out
        return {"fid": f"3,0{len(assigns)}ab", "url": "127.0.0.1:8080", "count": 4}, jwt.sign("k", {"exp": int(expires)})

    async with SeaweedStorage(settings_from(VigilSettings)) as storage:
        monkeypatch.setattr(storage, "_assign", assign)
        first = await storage._next_fid("5m")
        second = await storage._next_fid("5m")  # the rest of the first batch is dropped: a fresh assign
        third = await storage._next_fid("5m")  # from the second batch, still valid
    assert (first.fid, second.fid, third.fid) == ("3,01ab", "3,02ab", "3,02ab_1")
    assert len(assigns) == 2
