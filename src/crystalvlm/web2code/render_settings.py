"""What a render is asked to do (`RenderSettings`) and what it answers (`RenderResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from crystalvlm.web2code.browser import CLOSE_GRACE_S, DEAD_PROXY_SERVER, SANDBOX_MODES
from crystalvlm.web2code.layout import PageLayout


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
    # Chromium's sandbox: "auto" (on where the OS allows it, else off with a warning), "on"
    # (refuse to render without it) or "off". See web2code/browser.py for where it cannot work.
    sandbox: str = "auto"
    # Starting (or restarting) Chromium and opening a page in it. A browser that takes longer is
    # killed; the pages waiting for it are reported as errors.
    launch_timeout_s: float = 30.0
    # The wall for one whole `render` call; None: enough for every page to use its whole
    # `page_deadline_s` (see `call_deadline_s`). When it passes, the browser is killed and
    # restarted, pages already rendered are kept and the rest are reported as timeouts.
    call_timeout_s: float | None = None

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
        if self.sandbox not in SANDBOX_MODES:
            raise ValueError(f"RenderSettings.sandbox must be one of {', '.join(SANDBOX_MODES)}, got {self.sandbox!r}")
        if self.launch_timeout_s <= 0:
            raise ValueError(f"RenderSettings.launch_timeout_s must be positive, got {self.launch_timeout_s}")
        if self.call_timeout_s is not None and self.call_timeout_s <= 0:
            raise ValueError(f"RenderSettings.call_timeout_s must be positive or None, got {self.call_timeout_s}")

    @property
    def page_deadline_s(self) -> float:
        """The most one page may take, everything included: (re)starting the browser or its page,
        loading, laying out and capturing (`timeout_s`), and closing what it left behind. Past it
        the browser is taken to be wedged, killed and restarted."""
        return self.launch_timeout_s + self.timeout_s + 2 * CLOSE_GRACE_S

    def call_deadline_s(self, pages: int) -> float:
        """The wall for one `render` call of `pages` pages."""
        if self.call_timeout_s is not None:
            return self.call_timeout_s
        rounds = max(1, math.ceil(pages / self.workers))
        return rounds * self.page_deadline_s + self.launch_timeout_s


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
    sandboxed: bool | None = None  # whether Chromium's sandbox was on (None: no browser was involved)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> dict:
        """The JSON-friendly part (no image, no layout)."""
        return {"status": self.status, "reason": self.reason, "blocked_requests": self.blocked_requests,
                "blocked_by_route": self.blocked_by_route, "blocked_urls": list(self.blocked_urls),
                "elapsed": round(self.elapsed, 4),
                "notes": list(self.notes), "sandboxed": self.sandboxed}
