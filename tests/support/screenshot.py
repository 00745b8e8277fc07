"""Screenshot of a running dashboard for the docs: `python -m tests.support.screenshot URL OUT.png`
(with `make run SERVE=1` serving it, so the live panel shows the workers)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.browser import browser, wait_until


def main(url: str, out: Path) -> None:
    driver = browser()
    try:
        driver.get(url)
        wait_until(driver, "document.querySelectorAll('#events img').length > 1", "the event list")
        wait_until(
            driver, "[...document.querySelectorAll('#events img')].every(i => i.complete && i.naturalWidth > 0)", "the thumbnails"
        )
        items = driver.find_elements("css selector", "#events li")
        # An event with a sub-label (a cascade's) shows the most of the event view; else the second one.
        labelled = [li for li in items if li.find_elements("css selector", ".sub-label")]
        (labelled or items[1:] or items)[0].click()
        wait_until(driver, "document.querySelector('#player').readyState >= 2", "the clip")
        seek = "const v = document.querySelector('#player'); v.currentTime = Math.min(4, v.duration / 2); v.pause();"
        driver.execute_script(seek)
        wait_until(driver, "document.querySelector('#workers tbody tr') !== null", "the live panel")
        wait_until(driver, "!document.querySelector('#player').seeking", "the seek")
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
