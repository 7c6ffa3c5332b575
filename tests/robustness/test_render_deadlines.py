"""A wedged browser cannot hang `render`: every page and every call has a deadline, after which
the browser is killed and restarted, the page is reported with the reason, and the other pages of
the batch still render."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from crystalvlm.web2code.browser import browser_available, browser_processes
from crystalvlm.web2code.render import RenderPool, RenderSettings

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not browser_available(), reason="needs Playwright and Chromium")]

GOOD = "<p>fine page</p>"
ENDLESS = "<p>spins</p><script>while (true) {}</script>"
SLACK_S = 8.0  # process start-up and teardown on a busy 2-core machine


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_stopped_browser_is_killed_and_the_rest_of_the_batch_renders():
    settings = RenderSettings(viewport=(64, 64), workers=1, timeout_s=1.0, launch_timeout_s=20.0)
    with RenderPool(settings) as pool:
        assert pool.render([GOOD])[0].ok
        stopped = browser_processes(pool._launched.marker)
        assert stopped
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)  # the browser stops answering anything, as a wedged one does
        started = time.monotonic()
        first, second = pool.render([GOOD, GOOD])
        took = time.monotonic() - started
        assert first.status in ("timeout", "error") and second.ok, (first.reason, second.reason)
        assert took < settings.page_deadline_s + settings.launch_timeout_s + SLACK_S
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in stopped) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in stopped), "the wedged browser was left behind"
        assert pool.browser_kills >= 1


def test_a_launch_that_never_finishes_is_cut_off_and_the_pool_recovers(monkeypatch):
    settings = RenderSettings(viewport=(64, 64), workers=1, timeout_s=2.0, launch_timeout_s=3.0)
    try:
        pool = RenderPool(settings)
    except Exception as error:  # pragma: no cover - a very slow machine
        pytest.skip(f"Chromium did not start within 3 s here: {error}")
    with pool:
        chromium = pool._playwright.chromium
        real_launch = chromium.launch

        async def never(**options):
            await asyncio.sleep(3600)

        monkeypatch.setattr(chromium, "launch", never)
        pool._call(pool._drop_browser(kill=True))  # the next page needs a new browser
        started = time.monotonic()
        [result] = pool.render([GOOD])
        took = time.monotonic() - started
        assert result.status == "error" and "did not start within 3 s" in result.reason
        assert took < settings.page_deadline_s + SLACK_S
        monkeypatch.setattr(chromium, "launch", real_launch)
        assert pool.render([GOOD])[0].ok


def test_a_pool_whose_browser_never_starts_is_refused_in_time(monkeypatch):
    from playwright.async_api._generated import BrowserType

    async def never(self, **options):
        await asyncio.sleep(3600)

    monkeypatch.setattr(BrowserType, "launch", never)
    started = time.monotonic()
    with pytest.raises(Exception, match="did not start within 2 s"):
        RenderPool(RenderSettings(viewport=(64, 64), workers=1, launch_timeout_s=2.0))
    assert time.monotonic() - started < 2.0 + SLACK_S


def test_a_call_past_its_deadline_keeps_the_pages_done_and_reports_the_rest():
    # timeout_s is long, so only the call's own deadline can end the endless page.
    settings = RenderSettings(viewport=(64, 64), workers=2, timeout_s=60.0, java_script=True)
    with RenderPool(settings) as pool:
        assert pool.render([GOOD])[0].ok  # warm
        started = time.monotonic()
        results = pool.render([GOOD, ENDLESS, GOOD], call_timeout_s=4.0)
        took = time.monotonic() - started
        assert [r.status for r in results] == ["ok", "timeout", "ok"], [r.reason for r in results]
        assert "passed its deadline of 4 s" in results[1].reason
        assert took < 4.0 + SLACK_S
        assert pool.call_timeouts == 1
        assert [r.status for r in pool.render([GOOD, GOOD, GOOD])] == ["ok"] * 3  # and the pool goes on
