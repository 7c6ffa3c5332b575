"""Rendering HTML in a real browser (Chromium driven by Playwright), safely and fast.

`RenderPool` keeps one Chromium and `workers` reused browser contexts, each with one page, and
renders a list of HTML strings through them concurrently. Every page:

* reaches no network: the page is served from a made-up address (`http://render.invalid/...`)
  by Playwright's request interception, and every other request is answered locally, before any
  connection is made — navigations (meta refresh, links, iframes, popups, form posts) with
  "204 No Content", which leaves the page where it is, everything else aborted — and counted
  (`RenderResult.blocked_requests`, and for the pool's lifetime `RenderPool.traffic`). WebSockets
  are answered by a routed stand-in that never connects. `file:` loads are refused by Chromium
  itself and counted too. As second walls the browser resolves no host name, sends anything that
  slips past interception to a closed local proxy port (`fallback_proxy`), and lets WebRTC use no
  UDP that bypasses that proxy (a STUN request would otherwise leave by UDP);
* runs without JavaScript unless `java_script=True`;
* has a time limit (`timeout_s`) for load, layout read-out and screenshot together. A page that
  runs past it returns status "timeout"; a browser error returns status "error" with the reason.
  Either way the slot's context is thrown away and rebuilt (the whole browser if closing hangs or
  it crashed), so one hostile page never stops the pool. "Loaded" means `document.readyState`
  is "complete", polled, rather than Playwright's load event: a page that starts a navigation
  while parsing (`location.href = ...`, cancelled by the 204) finishes its document but never
  reports that event, and would otherwise wait out the limit.

Many small pages of one's own (a generated world's screenshots) render several times faster with
`render_tiled`: up to TILES_PER_SHEET pages at once, each in its own frame of a grid on one sheet,
captured in one screenshot and cut apart. A frame shows a page exactly as a window of the same size
does when the page is in standards mode (quirks mode lays out differently inside frames), so
`render_tiled` takes only pages that start with `<!DOCTYPE html>`. Anything unusual on a sheet — a
refused request, a timeout, an error, a frame that did not load — sends that sheet's pages through
`render` one by one, so every page still gets its own status and request count.

Modes: viewport (`full_page=False`, Web2Code's 1920x1080 default) or full page (Design2Code),
cut at `max_page_height` pixels.

Chromium: Debian's package (`/usr/bin/chromium`) is used through `executable_path`; Playwright's
own browser download is not needed. Set `CRYSTALVLM_CHROMIUM` to use another binary.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from crystalvlm.web2code.layout import EXTRACT_LAYOUT_JS, PageLayout

DOCUMENT_ORIGIN = "http://render.invalid"  # .invalid never resolves (RFC 2606)
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
INSTALL_HINT = (
    "install Chromium and Playwright: `apt-get install -y chromium fonts-dejavu-core fonts-liberation` "
    "and `pip install playwright` (or set CRYSTALVLM_CHROMIUM to a Chromium binary)"
)
# Defence in depth behind request interception: no DNS, and (see RenderSettings.fallback_proxy) a
# proxy on a closed local port for anything that is not intercepted, such as pre-connects.
# WebRTC: without the policy, an RTCPeerConnection sends STUN packets by UDP straight to any IP
# address the page names, past both proxy and interception (seen in testing with a local canary).
ISOLATION_ARGS = ("--host-resolver-rules=MAP * ~NOTFOUND", "--disable-dev-shm-usage", "--no-pings",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-domain-reliability", "--dns-prefetch-disable",
                  "--webrtc-ip-handling-policy=disable_non_proxied_udp", "--force-webrtc-ip-handling-policy")
DEAD_PROXY_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens, connections fail at once
READY_POLL_S = 0.02
MAX_LISTED_URLS = 16
RENEW_AFTER = 500  # renders before a slot's context is rebuilt (frees what the renderer accumulated)
TILES_PER_SHEET = 64  # pages per tiled render (render_tiled)
SHEET_MAX_SIDE = 2048  # CSS pixels; a sheet is at most this wide and tall
STANDARDS_MODE = re.compile(r"\s*<!doctype\s+html\s*>", re.IGNORECASE)
LOCAL_RESOURCE_REFUSED = "Not allowed to load local resource:"  # Chromium's console error for file: loads


class BrowserUnavailable(RuntimeError):
    """Chromium or Playwright is missing; the message says how to install them."""


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium binary to launch: `explicit`, $CRYSTALVLM_CHROMIUM, Debian's path or PATH."""
    for candidate in (explicit, os.environ.get("CRYSTALVLM_CHROMIUM")):
        if candidate:
            if not Path(candidate).is_file():
                raise BrowserUnavailable(f"Chromium binary {candidate!r} does not exist; {INSTALL_HINT}")
            return candidate
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserUnavailable(f"no Chromium found; {INSTALL_HINT}")


def browser_available() -> bool:
    """True when both Playwright and a Chromium binary are installed (tests skip otherwise)."""
    try:
        import playwright  # noqa: F401

        find_chromium()
        return True
    except (ImportError, BrowserUnavailable):
        return False


@dataclass(frozen=True)
class RenderSettings:
    viewport: tuple[int, int] = (1920, 1080)  # width, height in CSS pixels (Web2Code: 1920x1080)
    full_page: bool = False  # False: the viewport only; True: the whole page, cut at max_page_height
    max_page_height: int = 16384
    timeout_s: float = 10.0  # per page: load + layout read-out + screenshot
    java_script: bool = False
    workers: int = 2  # concurrent browser contexts
    settle_ms: int = 0  # extra wait after the load event (for pages with JavaScript on)
    extract_layout: bool = True  # read text blocks, elements and the DOM tree (for metrics and QA)
    max_nodes: int = 5000  # layout read-out stops after this many nodes (huge pages)
    word_boxes: bool = False  # also each word's box in the text blocks (tiny-world reader pretraining)
    max_html_chars: int = 5_000_000
    device_scale_factor: float = 1.0
    chromium: str | None = None  # binary; None: find_chromium()
    # Where the browser sends traffic that gets past interception (it should never have any).
    # Tests point this at a local listener and check that it stays silent.
    fallback_proxy: str = DEAD_PROXY_SERVER

    def __post_init__(self) -> None:
        width, height = self.viewport
        if not (isinstance(width, int) and isinstance(height, int) and 16 <= width <= 8192 and 16 <= height <= 8192):
            raise ValueError(f"RenderSettings.viewport must be two integers in 16..8192, got {self.viewport!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"RenderSettings.timeout_s must be positive, got {self.timeout_s}")
        if self.workers < 1:
            raise ValueError(f"RenderSettings.workers must be at least 1, got {self.workers}")
        if self.settle_ms < 0:
            raise ValueError(f"RenderSettings.settle_ms must be >= 0, got {self.settle_ms}")
        if self.max_page_height < height:
            raise ValueError(f"RenderSettings.max_page_height ({self.max_page_height}) is below the viewport height ({height})")


@dataclass
class RenderResult:
    png: bytes | None
    status: str  # "ok", "timeout" or "error"
    reason: str = ""  # empty when ok
    blocked_requests: int = 0  # requests that tried to leave the page and were refused
    blocked_urls: tuple[str, ...] = ()  # the first few of them
    elapsed: float = 0.0  # seconds
    layout: PageLayout | None = None
    notes: tuple[str, ...] = ()  # popups closed, WebSockets refused, navigation attempts ...
    blocked_by_route: int = 0  # of blocked_requests, those the route handler refused (http(s) requests, navigations)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> dict:
        """The JSON-friendly part (no image, no layout)."""
        return {"status": self.status, "reason": self.reason, "blocked_requests": self.blocked_requests,
                "blocked_by_route": self.blocked_by_route, "blocked_urls": list(self.blocked_urls),
                "elapsed": round(self.elapsed, 4),
                "notes": list(self.notes)}


@dataclass
class TrafficCounts:
    """Everything the pool's pages asked for, over the pool's lifetime."""
    served: int = 0  # documents handed to pages by the route handler (one per render)
    route_blocked: int = 0  # other requests the route handler saw and refused
    websockets_blocked: int = 0  # WebSockets answered by the stand-in (never connected)
    chromium_refused: int = 0  # loads Chromium refused itself (file:, chrome:, unknown schemes)

    @property
    def intercepted(self) -> int:
        """Requests the route handler saw: served documents plus refused requests."""
        return self.served + self.route_blocked

    @property
    def blocked(self) -> int:
        return self.route_blocked + self.websockets_blocked + self.chromium_refused


@dataclass
class _Slot:
    """One reused browser context + page, and the bookkeeping of the render it is doing."""
    index: int
    context: object = None
    page: object = None
    broken: bool = True  # needs a (re)build before use
    renders: int = 0  # over the slot's life: numbers the document URLs
    renders_since_build: int = 0  # since the context was (re)built: retires it after RENEW_AFTER
    document_url: str = ""
    html: str = ""
    served: bool = False
    blocked: int = 0
    blocked_by_route: int = 0
    blocked_urls: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    traffic: TrafficCounts = field(default_factory=TrafficCounts)  # the pool's, shared by all slots

    def begin(self, html: str) -> None:
        self.renders += 1
        self.renders_since_build += 1
        self.document_url = f"{DOCUMENT_ORIGIN}/{self.index}/{self.renders}.html"
        self.html, self.served = html, False
        self.blocked, self.blocked_by_route, self.blocked_urls, self.notes = 0, 0, [], []

    def refuse(self, url: str, by: str) -> None:
        """Count a refused request; `by` is "route", "websocket" or "chromium"."""
        self.blocked += 1
        if by == "route":
            self.blocked_by_route += 1
            self.traffic.route_blocked += 1
        elif by == "websocket":
            self.traffic.websockets_blocked += 1
        else:
            self.traffic.chromium_refused += 1
        if len(self.blocked_urls) < MAX_LISTED_URLS:
            self.blocked_urls.append(url[:200])


class RenderPool:
    """A warm Chromium with `settings.workers` reusable pages. Use as a context manager:

    >>> with RenderPool(RenderSettings(viewport=(320, 240))) as pool:   # doctest: +SKIP
    ...     results = pool.render(["<h1>Hello</h1>"])

    The pool runs Playwright's asyncio API on its own thread, so `render` is a plain blocking call
    that works from scripts, notebooks and servers alike. One `render` call runs at a time.
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
        self._playwright = None
        self._browser = None
        self.traffic = TrafficCounts()
        self._slots = [_Slot(index, traffic=self.traffic) for index in range(self.settings.workers)]
        self.browser_restarts = 0
        self.context_rebuilds = 0
        self.browser_version = ""
        self._closed = False
        try:
            self._call(self._start())
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing
    def _call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> None:
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        await self._launch()

    async def _launch(self) -> None:
        self._browser = await self._playwright.chromium.launch(
            executable_path=self._executable, args=list(ISOLATION_ARGS), headless=True,
            # "<-loopback>" removes the implicit proxy bypass for 127.0.0.1, so even local servers
            # are only reachable through the (dead) proxy.
            proxy={"server": self.settings.fallback_proxy, "bypass": "<-loopback>"})
        self.browser_version = self._browser.version
        for slot in self._slots:
            slot.broken = True

    async def _restart_browser(self) -> None:
        self.browser_restarts += 1
        old = self._browser
        self._browser = None
        if old is not None:
            try:
                await asyncio.wait_for(old.close(), 10)
            except Exception:  # a hung or dead browser: its process goes with the driver's cleanup
                pass
        await self._launch()

    async def _discard(self, slot: _Slot) -> None:
        """Close the slot's context (this also stops a page still spinning in a script); restart
        the browser when even closing hangs."""
        if slot.context is None:
            return
        self.context_rebuilds += 1
        context, slot.context, slot.page = slot.context, None, None
        try:
            await asyncio.wait_for(context.close(), 5)
        except Exception:
            await self._restart_browser()

    async def _build(self, slot: _Slot) -> None:
        """(Re)create the slot's context and page; restart the browser when that fails."""
        await self._discard(slot)
        for attempt in range(2):
            try:
                if self._browser is None or not self._browser.is_connected():
                    await self._restart_browser()
                await self._open(slot)
                slot.broken = False
                return
            except Exception:
                if attempt == 1:
                    raise
                await self._restart_browser()

    async def _open(self, slot: _Slot) -> None:
        width, height = self.settings.viewport
        context = await self._browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=self.settings.device_scale_factor,
            java_script_enabled=self.settings.java_script,
            service_workers="block",
            accept_downloads=False,
        )

        async def route(route, request) -> None:
            try:
                if request.url == slot.document_url and not slot.served:
                    slot.served = True
                    slot.traffic.served += 1
                    await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=slot.html)
                    return
                slot.refuse(request.url, "route")
                if request.is_navigation_request():
                    if _opens_new_window(request):
                        slot.notes.append("refused a popup window")
                    # "No Content" cancels a navigation and keeps the current document on screen.
                    await route.fulfill(status=204, body="")
                else:
                    await route.abort("blockedbyclient")
            except Exception:  # the context is closing; nothing to answer any more
                pass

        async def route_socket(socket) -> None:
            # Not calling connect_to_server() keeps the socket a local stand-in; closing it tells
            # the page the connection failed.
            slot.refuse(socket.url, "websocket")
            slot.notes.append("refused a WebSocket")
            await _quietly(socket.close(code=1008, reason="network access is disabled"))

        await context.route("**/*", route)
        await context.route_web_socket("**/*", route_socket)
        page = await context.new_page()

        def on_failed(request) -> None:
            # http(s) requests are all counted by `route`; file: is counted from its console error
            # (Chromium reports it there for every element kind, iframes included); other schemes here.
            if not request.url.startswith(("http:", "https:", "data:", "about:", "blob:", "file:", "ws:", "wss:")):
                slot.refuse(request.url, "chromium")

        def on_console(message) -> None:
            if message.type == "error" and message.text.startswith(LOCAL_RESOURCE_REFUSED):
                slot.refuse(message.text[len(LOCAL_RESOURCE_REFUSED):].strip(), "chromium")

        def on_popup(new_page) -> None:
            if new_page is not page:
                slot.notes.append("closed a popup window")
                asyncio.ensure_future(_quietly(new_page.close()))

        page.on("requestfailed", on_failed)
        page.on("console", on_console)
        context.on("page", on_popup)
        slot.context, slot.page = context, page
        slot.renders_since_build = 0

    # ------------------------------------------------------------------ rendering
    @staticmethod
    async def _load(slot: _Slot, settings: RenderSettings) -> None:
        """Open the slot's document and wait until it is loaded (see the module docstring) and settled."""
        page = slot.page
        await page.goto(slot.document_url, wait_until="commit", timeout=settings.timeout_s * 1000)
        while await page.evaluate("document.readyState") != "complete":
            await asyncio.sleep(READY_POLL_S)
        if settings.settle_ms:
            await asyncio.sleep(settings.settle_ms / 1000)

    async def _capture(self, slot: _Slot, settings: RenderSettings) -> tuple[bytes, PageLayout | None]:
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

    async def _render_one(self, slot: _Slot, html: str, settings: RenderSettings) -> RenderResult:
        started = time.monotonic()
        if isinstance(html, OSError):
            return RenderResult(None, "error", f"could not read the file: {html}")
        if not isinstance(html, str):
            return RenderResult(None, "error", f"expected a str of HTML, got {type(html).__name__}")
        if len(html) > settings.max_html_chars:
            return RenderResult(None, "error", f"the HTML has {len(html)} characters, over the limit of "
                                               f"{settings.max_html_chars} (RenderSettings.max_html_chars)")
        if slot.broken:
            await self._build(slot)
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
            status, reason = "error", _first_line(error)
            if "Target crashed" in reason:
                reason = f"the browser's renderer crashed on this page (very deep or very large DOM?): {reason}"
            slot.broken = True
        if slot.renders_since_build >= RENEW_AFTER:  # keep memory in check on very long runs
            slot.broken = True
        return RenderResult(png, status, reason, blocked_requests=slot.blocked, blocked_urls=tuple(slot.blocked_urls),
                            elapsed=time.monotonic() - started, layout=layout, notes=tuple(slot.notes),
                            blocked_by_route=slot.blocked_by_route)

    async def _render_all(self, html_list: list[str], settings: RenderSettings,
                          progress: Callable[[RenderResult], None] | None) -> list[RenderResult]:
        free: asyncio.Queue[_Slot] = asyncio.Queue()
        for slot in self._slots:
            free.put_nowait(slot)
        results: list[RenderResult | None] = [None] * len(html_list)

        async def job(index: int, html: str) -> None:
            slot = await free.get()
            try:
                results[index] = await self._render_one(slot, html, settings)
            except Exception as error:  # rebuilding failed twice: report, keep the pool going
                slot.broken = True
                results[index] = RenderResult(None, "error", f"browser could not be (re)started: {_first_line(error)}")
            finally:
                if slot.broken:  # free the hung page now rather than at the slot's next use
                    try:
                        await self._discard(slot)
                    except Exception:
                        pass
                free.put_nowait(slot)
                if progress is not None:
                    progress(results[index])

        await asyncio.gather(*(job(index, html) for index, html in enumerate(html_list)))
        return results  # type: ignore[return-value]

    def render(self, html_list: list[str], *, full_page: bool | None = None, timeout_s: float | None = None,
               progress: Callable[[RenderResult], None] | None = None) -> list[RenderResult]:
        """One `RenderResult` per HTML string, in order. `full_page`/`timeout_s` override the
        pool's settings for this call (the viewport and JavaScript switch are fixed per pool).
        `progress` is called with each result as it finishes (on the pool's thread)."""
        if self._closed:
            raise RuntimeError("this RenderPool is closed")
        if isinstance(html_list, str):
            raise TypeError("render() takes a list of HTML strings; wrap a single page in a list")
        settings = self.settings
        if full_page is not None or timeout_s is not None:
            settings = replace(settings, full_page=settings.full_page if full_page is None else full_page,
                               timeout_s=settings.timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            return self._call(self._render_all(list(html_list), settings, progress))

    # ------------------------------------------------------------------ tiled rendering
    def _sheet_grid(self, count: int) -> tuple[int, int]:
        """(columns, rows) of a sheet for `count` pages of the pool's viewport."""
        width, height = self.settings.viewport
        columns = max(1, min(count, SHEET_MAX_SIDE // width, math.ceil(math.sqrt(count))))
        return columns, math.ceil(count / columns)

    def sheet_capacity(self) -> int:
        """Pages per sheet at the pool's viewport (1 when a page is too big to tile)."""
        width, height = self.settings.viewport
        return max(1, min(TILES_PER_SHEET, (SHEET_MAX_SIDE // width) * (SHEET_MAX_SIDE // height)))

    async def _render_sheet(self, slot: _Slot, pages: list[str], settings: RenderSettings) -> list[RenderResult] | None:
        """The pages of one sheet, or None when the sheet must be redone page by page."""
        from html import escape

        from PIL import Image

        started = time.monotonic()
        width, height = settings.viewport
        columns, rows = self._sheet_grid(len(pages))
        frames = "".join(
            f'<iframe name="tile-{index}" srcdoc="{escape(page, quote=True)}" width="{width}" height="{height}" '
            f'scrolling="no" style="position:absolute;left:{(index % columns) * width}px;'
            f'top:{(index // columns) * height}px;border:0;margin:0;padding:0;display:block"></iframe>'
            for index, page in enumerate(pages))
        sheet = f'<!DOCTYPE html><html><body style="margin:0">{frames}</body></html>'
        if slot.broken:
            await self._build(slot)
        slot.begin(sheet)
        page = slot.page
        try:
            await page.set_viewport_size({"width": columns * width, "height": rows * height})

            async def capture():
                await self._load(slot, settings)
                options = {"maxNodes": settings.max_nodes, "fullPage": False, "maxHeight": settings.max_page_height,
                           "wantLayout": settings.extract_layout, "wordBoxes": settings.word_boxes}
                by_name = {frame.name: frame for frame in page.main_frame.child_frames}
                frames = [by_name.get(f"tile-{index}") for index in range(len(pages))]
                if any(frame is None for frame in frames):
                    return None, None
                infos = await asyncio.gather(*(frame.evaluate(EXTRACT_LAYOUT_JS, options) for frame in frames))
                return infos, await page.screenshot(timeout=settings.timeout_s * 1000)

            infos, png = await asyncio.wait_for(capture(), settings.timeout_s)
        except Exception:  # timeout or browser error: the page-by-page path reports it properly
            slot.broken = True
            return None
        finally:
            if not slot.broken:
                await _quietly(page.set_viewport_size({"width": width, "height": height}))
        if infos is None or slot.blocked or slot.notes or page.url != slot.document_url:
            slot.broken = True  # something on the sheet reached out or went astray: redo, one by one
            return None
        sheet_image = Image.open(io.BytesIO(png))
        sheet_image.load()
        scale = sheet_image.width / (columns * width)  # the device scale factor
        elapsed = (time.monotonic() - started) / len(pages)
        results = []
        for index, info in enumerate(infos):
            left, top = (index % columns) * width * scale, (index // columns) * height * scale
            tile = sheet_image.crop((round(left), round(top), round(left + width * scale), round(top + height * scale)))
            buffer = io.BytesIO()
            tile.save(buffer, format="PNG")
            layout = PageLayout.from_json(info) if settings.extract_layout else None
            results.append(RenderResult(buffer.getvalue(), "ok", elapsed=elapsed, layout=layout))
        if slot.renders_since_build >= RENEW_AFTER // TILES_PER_SHEET:
            slot.broken = True
        return results

    async def _render_tiled_all(self, html_list: list[str], settings: RenderSettings,
                                progress: Callable[[RenderResult], None] | None) -> list[RenderResult]:
        capacity = self.sheet_capacity()
        free: asyncio.Queue[_Slot] = asyncio.Queue()
        for slot in self._slots:
            free.put_nowait(slot)
        results: list[RenderResult | None] = [None] * len(html_list)
        redo: list[int] = []

        async def job(start: int) -> None:
            pages = html_list[start:start + capacity]
            slot = await free.get()
            try:
                sheet = await self._render_sheet(slot, pages, settings)
            except Exception:
                slot.broken, sheet = True, None
            finally:
                if slot.broken:
                    await _quietly(self._discard(slot))
                free.put_nowait(slot)
            if sheet is None:
                redo.extend(range(start, start + len(pages)))
                return
            for offset, result in enumerate(sheet):
                results[start + offset] = result
                if progress is not None:
                    progress(result)

        await asyncio.gather(*(job(start) for start in range(0, len(html_list), capacity)))
        if redo:
            redo.sort()
            for index, result in zip(redo, await self._render_all([html_list[i] for i in redo], settings, progress)):
                results[index] = result
        return results  # type: ignore[return-value]

    def render_tiled(self, html_list: list[str], *, progress: Callable[[RenderResult], None] | None = None
                     ) -> list[RenderResult]:
        """Like `render` in viewport mode, for many small standards-mode pages: several pages per
        screenshot (see the module docstring). Every page must start with `<!DOCTYPE html>`."""
        if self._closed:
            raise RuntimeError("this RenderPool is closed")
        if isinstance(html_list, str):
            raise TypeError("render_tiled() takes a list of HTML strings; wrap a single page in a list")
        if self.settings.full_page:
            raise ValueError("render_tiled captures viewports; this pool renders full pages (use render)")
        for index, html in enumerate(html_list):
            if not isinstance(html, str) or not STANDARDS_MODE.match(html):
                raise ValueError(f"render_tiled: page {index} does not start with <!DOCTYPE html>; a page in quirks "
                                 "mode looks different inside a frame than alone (use render for it)")
        with self._lock:
            return self._call(self._render_tiled_all(list(html_list), self.settings, progress))

    # ------------------------------------------------------------------ shutdown
    async def _shutdown(self) -> None:
        if self._browser is not None:
            try:
                await asyncio.wait_for(self._browser.close(), 10)
            except Exception:
                pass
        if self._playwright is not None:
            try:
                await asyncio.wait_for(self._playwright.stop(), 10)
            except Exception:
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread.is_alive():
                self._call(self._shutdown(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> "RenderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _LeftPage(Exception):
    pass


def _opens_new_window(request) -> bool:
    """True for the first navigation of a window the page opened (window.open, target=_blank):
    Playwright has no frame for it yet, while iframes and the page itself have one."""
    try:
        request.frame
    except Exception:
        return True
    return False


async def _quietly(coroutine) -> None:
    try:
        await coroutine
    except Exception:
        pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def render_html(html_list: list[str], settings: RenderSettings | None = None) -> list[RenderResult]:
    """Render with a pool started and stopped for this call (for a few pages; reuse a
    `RenderPool` for many)."""
    with RenderPool(settings) as pool:
        return pool.render(html_list)


@dataclass
class RenderedFile:
    source: Path
    image: Path | None
    result: RenderResult


def collect_html_inputs(inputs: list[Path]) -> list[Path]:
    """HTML files named directly or found (*.html, *.htm, sorted) in named folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in (".html", ".htm") and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"render input {item} does not exist")
    return files


def render_files(inputs: list[Path], out_dir: Path, settings: RenderSettings | None = None, *,
                 pool: RenderPool | None = None, write_layout: bool = False,
                 batch_size: int = 64, progress: bool = False) -> list[RenderedFile]:
    """Render HTML files (or folders of them) to `out_dir/<name>.png`.

    Writes `out_dir/render_report.jsonl` (one line per input: source, image, status, reason,
    blocked requests, seconds) and, with `write_layout`, `<name>.layout.json` next to each image.
    Pages that fail get no image; their report line says why. `progress` shows a bar."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = collect_html_inputs(inputs)
    names = _unique_names(files)
    own_pool = pool is None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="render", unit=" pages")
    pool = pool or RenderPool(settings)
    rendered: list[RenderedFile] = []
    try:
        with open(out_dir / "render_report.jsonl", "w", encoding="utf-8") as report:
            for start in range(0, len(files), batch_size):
                batch = files[start:start + batch_size]
                htmls = []
                for path in batch:
                    try:
                        htmls.append(path.read_text(encoding="utf-8", errors="replace"))
                    except OSError as error:  # unreadable file: the renderer reports a non-str as an error
                        htmls.append(error)
                results = pool.render(htmls, progress=(lambda _: bar.update(1)) if bar is not None else None)
                for path, name, result in zip(batch, names[start:start + batch_size], results):
                    image = None
                    if result.png is not None:
                        image = out_dir / f"{name}.png"
                        image.write_bytes(result.png)
                        if write_layout and result.layout is not None:
                            (out_dir / f"{name}.layout.json").write_text(json.dumps(layout_to_json(result.layout)))
                    report.write(json.dumps({"source": str(path), "image": str(image) if image else None,
                                             **result.summary()}) + "\n")
                    rendered.append(RenderedFile(path, image, result))
    finally:
        if bar is not None:
            bar.close()
        if own_pool:
            pool.close()
    return rendered


def _unique_names(files: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for path in files:
        stem = path.stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}_{count}")
    return names


def layout_to_json(layout: PageLayout) -> dict:
    """A JSON-friendly copy of a layout (text blocks, elements, and the DOM tree flat: pre-order
    tags with parent indices, as the browser reports it)."""
    dom = None
    if layout.dom is not None:
        tags, parents = layout.dom.to_flat()
        dom = {"tags": tags, "parents": parents}
    return {
        "width": layout.width, "height": layout.height, "document_height": layout.document_height,
        "document_width": layout.document_width,
        "background": list(layout.background), "truncated": layout.truncated, "title": layout.title,
        "text_blocks": [{"text": b.text, "bbox": list(b.bbox), "color": list(b.color),
                         "words": [[w.text, *w.bbox] for w in b.words]} for b in layout.text_blocks],
        "elements": [{"tag": e.tag, "text": e.text, "own_text": e.own_text, "bbox": list(e.bbox),
                      "color": list(e.color), "background": list(e.background) if e.background else None,
                      "font_size": e.font_size, "bold": e.bold, "depth": e.depth} for e in layout.elements],
        "dom": dom,
    }
