"""`RenderPool`: one warm Chromium with `workers` reusable isolated pages, rendering lists of HTML
strings concurrently, where no page and no call can hang.

Deadlines, from the inside out:

* `RenderSettings.timeout_s` — load, layout read-out and screenshot of one page. A page that runs
  past it returns status "timeout"; its context is thrown away and rebuilt. "Loaded" means
  `document.readyState` is "complete", polled, rather than Playwright's load event: a page that
  starts a navigation while parsing (`location.href = ...`, cancelled by the 204) finishes its
  document but never reports that event, and would otherwise wait out the limit.
* `RenderSettings.page_deadline_s` — everything one page may take, (re)starting the browser and
  cleaning up included. Past it the browser is taken to be wedged (it stopped answering: a renderer
  stuck in a loop that also holds the browser, a stopped process, a launch that never finishes):
  it is killed outright (Playwright's `close()` needs its cooperation) and a new one starts with
  the next page. Pages that other slots were rendering in the killed browser are rendered again
  once, so nothing good is lost.
* `RenderSettings.call_deadline_s(n)` — one `render` call. Past it the browser is killed, pages
  already rendered are kept and the others are reported as timeouts. It only fires when something
  unforeseen blocks the deadlines above.

The pool runs Playwright's asyncio API on its own thread, so `render` is a plain blocking call
that works from scripts, notebooks and servers alike. One `render` call runs at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from crystalvlm.web2code.browser import (CLOSE_GRACE_S, INSTALL_HINT, BrowserUnavailable, LaunchedBrowser,
                                         first_line, find_chromium, kill_browser_processes, launch_chromium)
from crystalvlm.web2code.isolation import Slot, TrafficCounts, open_isolated_page
from crystalvlm.web2code.layout import EXTRACT_LAYOUT_JS, PageLayout
from crystalvlm.web2code.render_settings import RenderResult, RenderSettings

READY_POLL_S = 0.02
RENEW_AFTER = 500  # renders before a slot's context is rebuilt (frees what the renderer accumulated)


class _LeftPage(Exception):
    pass


class RenderPool:
    """A warm Chromium with `settings.workers` reusable pages. Use as a context manager:

    >>> with RenderPool(RenderSettings(viewport=(320, 240))) as pool:   # doctest: +SKIP
    ...     results = pool.render(["<h1>Hello</h1>"])
    """

    def __init__(self, settings: RenderSettings | None = None) -> None:
        self.settings = settings or RenderSettings()
        self._executable = find_chromium(self.settings.chromium)
        try:
            from playwright.async_api import async_playwright  # noqa: F401
        except ImportError:
            raise BrowserUnavailable(f"Playwright is not installed; {INSTALL_HINT}") from None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="crystalvlm-render", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._launch_lock = asyncio.Lock()
        self._playwright = None
        self._launched: LaunchedBrowser | None = None
        self._generation = 0  # bumped whenever the browser is replaced; a page rendering across a bump is redone
        self._running: asyncio.Task | None = None  # the render call in progress (cancelled past its deadline)
        self.traffic = TrafficCounts()
        self._slots = [Slot(index, traffic=self.traffic) for index in range(self.settings.workers)]
        self.browser_restarts = 0
        self.browser_kills = 0  # browsers killed because they stopped answering
        self.call_timeouts = 0
        self.context_rebuilds = 0
        self.browser_version = ""
        self.sandboxed: bool | None = None  # whether Chromium's sandbox is on (see browser.py)
        self.sandbox_reason = ""  # why it is off
        self._closed = False
        try:
            # Starting Playwright's driver and Chromium each have launch_timeout_s; this wall only
            # catches what those do not.
            self._call(self._start(), timeout=2 * self.settings.launch_timeout_s + CLOSE_GRACE_S)
        except concurrent.futures.TimeoutError:
            self.close()
            raise BrowserUnavailable(f"Playwright and Chromium did not start within "
                                     f"{2 * self.settings.launch_timeout_s + CLOSE_GRACE_S:g} s") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ browser lifecycle
    def _call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> None:
        from playwright.async_api import async_playwright

        try:
            self._playwright = await asyncio.wait_for(async_playwright().start(), self.settings.launch_timeout_s)
        except asyncio.TimeoutError:
            raise BrowserUnavailable(f"Playwright's driver did not start within {self.settings.launch_timeout_s:g} s") from None
        async with self._launch_lock:
            await self._launch()

    async def _launch(self) -> None:
        launched = await launch_chromium(self._playwright, self._executable, sandbox=self.settings.sandbox,
                                         fallback_proxy=self.settings.fallback_proxy,
                                         timeout_s=self.settings.launch_timeout_s)
        self._launched = launched
        self._generation += 1
        self.browser_version = launched.browser.version
        self.sandboxed, self.sandbox_reason = launched.sandboxed, launched.sandbox_reason
        for slot in self._slots:
            slot.broken, slot.context, slot.page = True, None, None

    @property
    def _browser(self):
        return self._launched.browser if self._launched is not None else None

    async def _ensure_browser(self) -> None:
        """A connected browser, launched now if there is none (one launch for all slots waiting)."""
        async with self._launch_lock:
            if self._launched is not None and self._launched.browser.is_connected():
                return
            if self._launched is not None:  # it died (crash, or killed): clear what is left of it
                await self._drop_browser(kill=True)
            self.browser_restarts += 1
            await self._launch()

    async def _drop_browser(self, *, kill: bool, seen: int | None = None) -> None:
        """Let go of the browser: every slot must rebuild, the next page launches a new one.
        `kill`: SIGKILL it at once (it stopped answering); otherwise close it, and kill it when it
        does not close within CLOSE_GRACE_S. `seen`: only if no one replaced it since that generation."""
        if seen is not None and seen != self._generation:
            return
        launched, self._launched = self._launched, None
        self._generation += 1
        for slot in self._slots:
            slot.broken, slot.context, slot.page = True, None, None
        if launched is None:
            return
        if kill:
            self.browser_kills += 1
            kill_browser_processes(launched.marker)
        try:  # after a kill this only tidies Playwright's side, which notices the closed pipe at once
            await asyncio.wait_for(launched.browser.close(), 1.0 if kill else CLOSE_GRACE_S)
        except Exception:
            pass
        kill_browser_processes(launched.marker)  # whatever did not close (no-op after a clean close)

    async def _discard(self, slot: Slot) -> None:
        """Close the slot's context (this also stops a page still spinning in a script); kill the
        browser when even closing hangs: a browser that cannot close a page is wedged."""
        if slot.context is None:
            return
        self.context_rebuilds += 1
        context, slot.context, slot.page = slot.context, None, None
        seen = self._generation
        try:
            await asyncio.wait_for(context.close(), CLOSE_GRACE_S)
        except Exception:
            await self._drop_browser(kill=True, seen=seen)

    async def _build(self, slot: Slot) -> None:
        """(Re)create the slot's context and page; replace the browser when that fails."""
        await self._discard(slot)
        for attempt in range(2):
            seen = self._generation
            try:
                await self._ensure_browser()
                await asyncio.wait_for(open_isolated_page(self._launched.browser, slot, self.settings),
                                       self.settings.launch_timeout_s)
                slot.broken = False
                return
            except BrowserUnavailable:
                raise  # Chromium did not start in time: a second launch would not do better within the page's deadline
            except Exception:
                if attempt == 1:
                    raise
                await self._drop_browser(kill=True, seen=seen)

    # ------------------------------------------------------------------ rendering one page
    @staticmethod
    async def _load(slot: Slot, settings: RenderSettings) -> None:
        """Open the slot's document and wait until it is loaded (see the module docstring) and settled."""
        page = slot.page
        await page.goto(slot.document_url, wait_until="commit", timeout=settings.timeout_s * 1000)
        while await page.evaluate("document.readyState") != "complete":
            await asyncio.sleep(READY_POLL_S)
        if settings.settle_ms:
            await asyncio.sleep(settings.settle_ms / 1000)

    async def _capture(self, slot: Slot, settings: RenderSettings) -> tuple[bytes, PageLayout | None]:
        page = slot.page
        limit_ms = settings.timeout_s * 1000
        await self._load(slot, settings)
        info = await page.evaluate(EXTRACT_LAYOUT_JS, {
            "maxNodes": settings.max_nodes, "fullPage": settings.full_page,
            "maxHeight": settings.max_page_height, "wantLayout": settings.extract_layout,
            "wordBoxes": settings.word_boxes})
        if page.url != slot.document_url:
            raise _LeftPage(f"the page navigated away to {page.url[:120]}")
        if settings.full_page:
            clip = {"x": 0, "y": 0, "width": info["width"], "height": info["height"]}
            png = await page.screenshot(full_page=True, clip=clip, timeout=limit_ms)
        else:
            png = await page.screenshot(timeout=limit_ms)
        layout = PageLayout.from_json(info) if settings.extract_layout else None
        return png, layout

    async def _attempt(self, slot: Slot, html: str, settings: RenderSettings) -> tuple[RenderResult, bool]:
        """One try at a page: (result, whether the browser was replaced under it meanwhile)."""
        try:
            if slot.broken:
                await self._build(slot)
        except Exception as error:  # rebuilding failed twice, or Chromium does not start: report, go on
            slot.broken = True
            return RenderResult(None, "error", f"browser could not be (re)started: {first_line(error)}",
                                sandboxed=self.sandboxed), False
        generation = self._generation
        slot.begin(html)
        png, layout, status, reason = None, None, "ok", ""
        try:
            png, layout = await asyncio.wait_for(self._capture(slot, settings), settings.timeout_s)
        except asyncio.TimeoutError:
            status, reason = "timeout", (f"the page did not load, lay out and paint within {settings.timeout_s:g} s "
                                         "(endless script, huge page or stalled renderer)")
            slot.broken = True
        except _LeftPage as error:
            status, reason = "error", str(error)
            slot.broken = True
        except Exception as error:  # Playwright errors: crashed renderer, closed target, bad content
            status, reason = "error", first_line(error)
            if "Target crashed" in reason:
                reason = f"the browser's renderer crashed on this page (very deep or very large DOM?): {reason}"
            slot.broken = True
        disturbed = self._generation != generation
        if slot.renders_since_build >= RENEW_AFTER:  # keep memory in check on very long runs
            slot.broken = True
        result = RenderResult(png, status, reason, blocked_requests=slot.blocked, blocked_urls=tuple(slot.blocked_urls),
                              layout=layout, notes=tuple(slot.notes), blocked_by_route=slot.blocked_by_route,
                              sandboxed=self.sandboxed)
        if slot.broken:  # free the hung page now rather than at the slot's next use
            await self._discard(slot)
        return result, disturbed

    async def _render_one(self, slot: Slot, html: str, settings: RenderSettings) -> RenderResult:
        started = time.monotonic()
        if isinstance(html, OSError):
            return RenderResult(None, "error", f"could not read the file: {html}")
        if not isinstance(html, str):
            return RenderResult(None, "error", f"expected a str of HTML, got {type(html).__name__}")
        if len(html) > settings.max_html_chars:
            return RenderResult(None, "error", f"the HTML has {len(html)} characters, over the limit of "
                                               f"{settings.max_html_chars} (RenderSettings.max_html_chars)")
        notes: tuple[str, ...] = ()
        for attempt in range(2):
            try:
                result, disturbed = await asyncio.wait_for(self._attempt(slot, html, settings),
                                                           settings.page_deadline_s)
            except asyncio.TimeoutError:
                await self._drop_browser(kill=True)
                result, disturbed = RenderResult(
                    None, "timeout", f"the browser did not finish this page within {settings.page_deadline_s:g} s "
                    "(RenderSettings.page_deadline_s: start-up, load, capture and clean-up together); it stopped "
                    "answering, so it was killed and a new one started", sandboxed=self.sandboxed), False
            if result.ok or not disturbed or attempt:
                break
            # Another page wedged or crashed the browser while this one was rendering: its failure
            # says nothing about this page, so it gets a second try in the new browser.
            notes = ("rendered again: the browser was replaced while this page was rendering",)
        result.notes = notes + result.notes
        result.elapsed = time.monotonic() - started
        return result

    # ------------------------------------------------------------------ rendering many
    async def _render_all(self, html_list: list[str], settings: RenderSettings,
                          progress: Callable[[RenderResult], None] | None,
                          results: list[RenderResult | None] | None = None) -> list[RenderResult | None]:
        """Fills `results` (one per page, in order) as pages finish, so a call stopped at its
        deadline keeps what was done."""
        if results is None:
            results = [None] * len(html_list)
        free: asyncio.Queue[Slot] = asyncio.Queue()
        for slot in self._slots:
            free.put_nowait(slot)

        async def job(index: int, html: str) -> None:
            slot = await free.get()
            try:
                results[index] = await self._render_one(slot, html, settings)
            except Exception as error:  # a bug, not a page: report it on the page, keep the pool going
                slot.broken = True
                results[index] = RenderResult(None, "error", f"internal error: {first_line(error)}",
                                              sandboxed=self.sandboxed)
            finally:
                free.put_nowait(slot)
            if progress is not None:
                progress(results[index])

        await asyncio.gather(*(job(index, html) for index, html in enumerate(html_list)))
        return results

    async def _tracked(self, coroutine):
        """Run a render call as the pool's current task, so that its deadline can stop it."""
        self._running = asyncio.current_task()
        try:
            return await coroutine
        finally:
            self._running = None

    async def _abandon(self) -> None:
        """Past a call's deadline: kill the browser first, so whatever the call waits for fails at
        once, then cancel the call and wait until it has let go of its slots."""
        task = self._running
        await self._drop_browser(kill=True)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_GRACE_S)

    def _run_call(self, coroutine, deadline_s: float) -> bool:
        """Run a render call on the pool's thread within `deadline_s`; False if it was stopped."""
        future = asyncio.run_coroutine_threadsafe(self._tracked(coroutine), self._loop)
        try:
            future.result(deadline_s)
            return True
        except concurrent.futures.TimeoutError:
            pass
        self.call_timeouts += 1
        launched = self._launched
        if launched is not None:  # from this thread too, in case the pool's own thread is stuck
            kill_browser_processes(launched.marker)
        try:
            self._call(self._abandon(), timeout=2 * CLOSE_GRACE_S + 2)
        except concurrent.futures.TimeoutError:
            self._closed = True  # the pool's thread does not answer: nothing more can run on it
            raise RuntimeError(f"the render call passed its deadline of {deadline_s:g} s and the pool's thread does "
                               "not answer (a progress callback that never returns?); the pool is closed") from None
        return False

    def _finish(self, results: list[RenderResult | None], deadline_s: float,
                progress: Callable[[RenderResult], None] | None) -> list[RenderResult]:
        for index, result in enumerate(results):
            if result is None:
                results[index] = RenderResult(
                    None, "timeout", f"not rendered: the render call passed its deadline of {deadline_s:g} s "
                    "(RenderSettings.call_timeout_s); the browser was killed and a new one starts with the next render",
                    sandboxed=self.sandboxed)
                if progress is not None:
                    progress(results[index])
        return results  # type: ignore[return-value]

    def render(self, html_list: list[str], *, full_page: bool | None = None, timeout_s: float | None = None,
               progress: Callable[[RenderResult], None] | None = None,
               call_timeout_s: float | None = None) -> list[RenderResult]:
        """One `RenderResult` per HTML string, in order. `full_page`/`timeout_s`/`call_timeout_s`
        override the pool's settings for this call (the viewport and JavaScript switch are fixed per
        pool). `progress` is called with each result as it finishes (on the pool's thread; for pages
        cut off by the call's deadline, on the caller's)."""
        if self._closed:
            raise RuntimeError("this RenderPool is closed")
        if isinstance(html_list, str):
            raise TypeError("render() takes a list of HTML strings; wrap a single page in a list")
        settings = self.settings
        overrides = {name: value for name, value in
                     (("full_page", full_page), ("timeout_s", timeout_s), ("call_timeout_s", call_timeout_s))
                     if value is not None}
        if overrides:
            settings = replace(settings, **overrides)
        pages = list(html_list)
        results: list[RenderResult | None] = [None] * len(pages)
        deadline = settings.call_deadline_s(len(pages))
        with self._lock:
            self._run_call(self._render_all(pages, settings, progress, results), deadline)
        return self._finish(results, deadline, progress)

    def render_tiled(self, html_list: list[str], *, progress: Callable[[RenderResult], None] | None = None
                     ) -> list[RenderResult]:
        """Like `render` in viewport mode, for many small standards-mode pages: several pages per
        screenshot (see `tiling`). Every page must start with `<!DOCTYPE html>`."""
        from crystalvlm.web2code import tiling

        if self._closed:
            raise RuntimeError("this RenderPool is closed")
        pages = tiling.check_tileable(html_list, self.settings)
        results: list[RenderResult | None] = [None] * len(pages)
        deadline = tiling.call_deadline_s(self, len(pages))
        with self._lock:
            self._run_call(tiling.render_tiled_all(self, pages, self.settings, progress, results), deadline)
        return self._finish(results, deadline, progress)

    def sheet_capacity(self) -> int:
        """Pages per tiled sheet at the pool's viewport (1 when a page is too big to tile)."""
        from crystalvlm.web2code.tiling import sheet_capacity

        return sheet_capacity(self.settings.viewport)

    # ------------------------------------------------------------------ shutdown
    async def _shutdown(self) -> None:
        await self._drop_browser(kill=False)
        if self._playwright is not None:
            try:
                await asyncio.wait_for(self._playwright.stop(), 10)
            except Exception:
                pass

    def close(self) -> None:
        if self._closed and not self._thread.is_alive():
            return
        self._closed = True
        try:
            if self._thread.is_alive():
                self._call(self._shutdown(), timeout=30)
        except Exception:
            launched = self._launched
            if launched is not None:
                kill_browser_processes(launched.marker)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> "RenderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_html(html_list: list[str], settings: RenderSettings | None = None) -> list[RenderResult]:
    """Render with a pool started and stopped for this call (for a few pages; reuse a
    `RenderPool` for many)."""
    with RenderPool(settings) as pool:
        return pool.render(html_list)
