"""Headless Chromium through Selenium (Debian's `chromium` and `chromium-driver`; browsers cannot be downloaded)."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = "needs Debian's chromium and chromium-driver: run scripts/install-test-deps.sh as root"


def browser(width: int = 1500, height: int = 950) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))


def wait_until(driver: Any, script: str, what: str, timeout: float = 30.0) -> Any:
    """Poll a JavaScript expression until it is truthy; its value is returned."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: d.execute_script(f"return {script};"), message=f"timed out waiting for {what}"
    )
