"""A page that reaches no network: one reusable browser context and page (a `Slot`), the request
interception that serves it its document and refuses everything else, and the counts of what it
refused.

The page is served from a made-up address (`http://render.invalid/...`) by Playwright's request
interception, and every other request is answered locally, before any connection is made:
navigations (meta refresh, links, iframes, popups, form posts) with "204 No Content", which leaves
the page where it is, everything else aborted; all are counted (`RenderResult.blocked_requests`, and
for the pool's lifetime `TrafficCounts`). WebSockets are answered by a routed stand-in that never
connects. `file:` loads are refused by Chromium itself and counted too. The browser's own walls
behind this one are in `browser.py`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

DOCUMENT_ORIGIN = "http://render.invalid"  # .invalid never resolves (RFC 2606)
MAX_LISTED_URLS = 16
LOCAL_RESOURCE_REFUSED = "Not allowed to load local resource:"  # Chromium's console error for file: loads


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
class Slot:
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


async def open_isolated_page(browser, slot: Slot, settings) -> None:
    """Give `slot` a new context and page in `browser`, with interception wired to the slot."""
    width, height = settings.viewport
    context = await browser.new_context(
        viewport={"width": width, "height": height},
        device_scale_factor=settings.device_scale_factor,
        java_script_enabled=settings.java_script,
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
        await quietly(socket.close(code=1008, reason="network access is disabled"))

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
            asyncio.ensure_future(quietly(new_page.close()))

    page.on("requestfailed", on_failed)
    page.on("console", on_console)
    context.on("page", on_popup)
    slot.context, slot.page = context, page
    slot.renders_since_build = 0


def _opens_new_window(request) -> bool:
    """True for the first navigation of a window the page opened (window.open, target=_blank):
    Playwright has no frame for it yet, while iframes and the page itself have one."""
    try:
        request.frame
    except Exception:
        return True
    return False


async def quietly(coroutine) -> None:
    try:
        await coroutine
    except Exception:
        pass
