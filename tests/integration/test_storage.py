from urllib.parse import urlsplit

import pytest

from fleet.servers import ServerSet
from shared.settings import VigilSettings
from shared.storage import ForbiddenURL, SeaweedStorage
from tests.support.settings import MakeSettings
from tests.support.weed import expire_frame


async def test_upload_with_ttl_download_and_delete(make_settings: MakeSettings, servers: ServerSet) -> None:
    async with SeaweedStorage(make_settings(VigilSettings)) as storage:
        await storage.wait_ready()
        urls = [await storage.upload(f"frame {i}".encode(), ttl="5m") for i in range(70)]  # crosses an assign batch
        assert len(set(urls)) == 70
        assert await storage.download(urls[65]) == b"frame 65"
        await expire_frame(servers, urls[0])
        with pytest.raises(Exception, match="404"):
            await storage.download(urls[0])


async def test_filer_paths_hold_proofs(service_env: dict[str, str], make_settings: MakeSettings, unique: str) -> None:
    async with SeaweedStorage(make_settings(VigilSettings)) as storage:
        url = await storage.put_path(f"vigil/{unique}/clip.mp4", b"\x00\x01mp4", content_type="video/mp4")
        assert url.startswith(service_env["filer_url"])
        assert await storage.download(url) == b"\x00\x01mp4"


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data", "file:///etc/passwd", "http://127.0.0.1:1/3,01", "gopher://x"]
)
async def test_foreign_urls_are_never_fetched(make_settings: MakeSettings, url: str) -> None:
    async with SeaweedStorage(make_settings(VigilSettings)) as storage:
        with pytest.raises(ForbiddenURL):
            await storage.download(url)


async def test_the_seed_volume_url_names_the_filer_and_frames_still_download(servers: ServerSet) -> None:
    # The seed's .env has volume_url=http://localhost:8888, the filer, and no other SeaweedFS address than the
    # master's: the volume server a frame is on is trusted because the master names it for that volume.
    filer = servers.filer_url.replace("127.0.0.1", "localhost")
    settings = seed_settings(servers, filer)
    assert settings.filer_url == filer  # proofs go to the one SeaweedFS address the seed names
    async with SeaweedStorage(settings) as storage:
        assert urlsplit(servers.volume_url).netloc not in storage.allowed_hosts
        url = await storage.upload(b"frame", ttl="5m")
        assert await storage.download(url) == b"frame"
        # The same volume and file on a host the master does not name: refused, never fetched.
        parts = urlsplit(url)
        for host in ("169.254.169.254", f"127.0.0.1:{urlsplit(servers.master_url).port}", "localhost:1"):
            with pytest.raises(ForbiddenURL):
                await storage.download(f"http://{host}{parts.path}")

        # A volume the master places elsewhere (or nowhere) on that same, trusted host: refused too.
        volume_host = parts.netloc
        with pytest.raises(ForbiddenURL):
            await storage.download(f"https://{volume_host}/99999,01637037d6")


def seed_settings(servers: ServerSet, filer: str) -> VigilSettings:
    """The seed's two SeaweedFS addresses (the master and the filer as volume_url), with a worker's read key."""
    tls = servers.tls_files()
    return VigilSettings(
        _env_file=None,  # type: ignore[call-arg]
        master_url=servers.master_url,
        volume_url=filer,
        tls_ca_file=tls.ca,
        tls_cert_file=tls.cert,
        tls_key_file=tls.key,
        storage_read_key_file=servers.key_file("volume-read"),
    )


async def test_the_master_is_asked_again_about_a_volume_server_it_named(servers: ServerSet) -> None:
    # Volume servers come and go: the master's word that one holds a volume is kept a while, not for ever.
    async with SeaweedStorage(seed_settings(servers, servers.filer_url), named_host_seconds=60) as kept:
        url = await kept.upload(b"frame", ttl="5m")
        for _ in range(3):
            assert await kept.download(url) == b"frame"
        assert kept.volume_lookups == 1  # asked once, then remembered
    async with SeaweedStorage(seed_settings(servers, servers.filer_url), named_host_seconds=0) as forgetful:
        for _ in range(3):
            assert await forgetful.download(url) == b"frame"
        assert forgetful.volume_lookups == 3  # its answers lapse at once: asked at every download
