"""Rendering HTML in a real browser (Chromium driven by Playwright), safely and fast: the public
names, one import away. Each concept lives in its own module:

* `browser`         — finding and launching Chromium, and its policy: the sandbox (on wherever the
                      OS allows it), the network walls behind interception, the hard kill of a
                      browser that stops answering;
* `isolation`       — one reusable page that reaches no network: request interception, refused
                      and counted requests;
* `render_settings` — `RenderSettings` (what to render, time limits) and `RenderResult`;
* `render_pool`     — `RenderPool`: a warm browser with `workers` pages, rendering lists of HTML
                      concurrently, each page and each call within a deadline;
* `tiling`          — many small standards-mode pages per screenshot (`RenderPool.render_tiled`);
* `render_files`    — HTML files and folders to PNG files with a report.

Every page reaches no network (see `isolation` and `browser`), runs without JavaScript unless
`java_script=True`, and has a time limit; a page that runs past it returns status "timeout", a
browser error status "error" with the reason, and the pool goes on (see `render_pool`).

Modes: viewport (`full_page=False`, Web2Code's 1920x1080 default) or full page (Design2Code),
cut at `max_page_height` pixels.

Chromium: Debian's package (`/usr/bin/chromium`) is used through `executable_path`; Playwright's
own browser download is not needed. Set `CRYSTALVLM_CHROMIUM` to use another binary.
"""

from __future__ import annotations

from crystalvlm.web2code.browser import (CHROMIUM_CANDIDATES, DEAD_PROXY_SERVER, INSTALL_HINT, ISOLATION_ARGS,
                                         BrowserUnavailable, SandboxDecision, browser_available, find_chromium,
                                         sandbox_decision)
from crystalvlm.web2code.isolation import DOCUMENT_ORIGIN, LOCAL_RESOURCE_REFUSED, MAX_LISTED_URLS, TrafficCounts
from crystalvlm.web2code.render_files import RenderedFile, collect_html_inputs, layout_to_json, render_files
from crystalvlm.web2code.render_pool import READY_POLL_S, RENEW_AFTER, RenderPool, render_html
from crystalvlm.web2code.render_settings import RenderResult, RenderSettings
from crystalvlm.web2code.tiling import SHEET_MAX_SIDE, STANDARDS_MODE, TILES_PER_SHEET

__all__ = [
    "CHROMIUM_CANDIDATES", "DEAD_PROXY_SERVER", "DOCUMENT_ORIGIN", "INSTALL_HINT", "ISOLATION_ARGS",
    "LOCAL_RESOURCE_REFUSED", "MAX_LISTED_URLS", "READY_POLL_S", "RENEW_AFTER", "SHEET_MAX_SIDE",
    "STANDARDS_MODE", "TILES_PER_SHEET", "BrowserUnavailable", "RenderPool", "RenderResult", "RenderSettings",
    "RenderedFile", "SandboxDecision", "TrafficCounts", "browser_available", "collect_html_inputs",
    "find_chromium", "layout_to_json", "render_files", "render_html", "sandbox_decision",
]
