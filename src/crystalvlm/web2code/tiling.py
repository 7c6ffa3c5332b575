"""Tiled rendering: many small pages of one's own (a generated world's screenshots) several times
faster than one by one.

Up to TILES_PER_SHEET pages at once, each in its own frame of a grid on one sheet, captured in one
screenshot and cut apart. A frame shows a page exactly as a window of the same size does when the
page is in standards mode (quirks mode lays out differently inside frames), so only pages that
start with `<!DOCTYPE html>` are taken. Anything unusual on a sheet — a refused request, a
timeout, an error, a frame that did not load — sends that sheet's pages through the pool's
page-by-page path, so every page still gets its own status and request count.

Used through `RenderPool.render_tiled`; the functions here drive the pool's slots.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from crystalvlm.web2code.isolation import Slot, quietly
from crystalvlm.web2code.layout import EXTRACT_LAYOUT_JS, PageLayout
from crystalvlm.web2code.render_settings import RenderResult, RenderSettings

if TYPE_CHECKING:
    from crystalvlm.web2code.render_pool import RenderPool

TILES_PER_SHEET = 64  # pages per tiled render
SHEET_MAX_SIDE = 2048  # CSS pixels; a sheet is at most this wide and tall
STANDARDS_MODE = re.compile(r"\s*<!doctype\s+html\s*>", re.IGNORECASE)


def sheet_grid(viewport: tuple[int, int], count: int) -> tuple[int, int]:
    """(columns, rows) of a sheet for `count` pages of `viewport`."""
    width, _ = viewport
    columns = max(1, min(count, SHEET_MAX_SIDE // width, math.ceil(math.sqrt(count))))
    return columns, math.ceil(count / columns)


def sheet_capacity(viewport: tuple[int, int]) -> int:
    """Pages per sheet at `viewport` (1 when a page is too big to tile)."""
    width, height = viewport
    return max(1, min(TILES_PER_SHEET, (SHEET_MAX_SIDE // width) * (SHEET_MAX_SIDE // height)))


def check_tileable(html_list: list[str], settings: RenderSettings) -> list[str]:
    """The pages as a list, or a clear error for input that cannot be tiled."""
    if isinstance(html_list, str):
        raise TypeError("render_tiled() takes a list of HTML strings; wrap a single page in a list")
    if settings.full_page:
        raise ValueError("render_tiled captures viewports; this pool renders full pages (use render)")
    for index, html in enumerate(html_list):
        if not isinstance(html, str) or not STANDARDS_MODE.match(html):
            raise ValueError(f"render_tiled: page {index} does not start with <!DOCTYPE html>; a page in quirks "
                             "mode looks different inside a frame than alone (use render for it)")
    return list(html_list)


def call_deadline_s(pool: RenderPool, pages: int) -> float:
    """The wall for a tiled call: its sheets, then (worst case) every page again one by one."""
    settings = pool.settings
    sheets = math.ceil(pages / sheet_capacity(settings.viewport))
    return math.ceil(sheets / settings.workers) * settings.page_deadline_s + settings.call_deadline_s(pages)


async def render_sheet(pool: RenderPool, slot: Slot, pages: list[str], settings: RenderSettings
                       ) -> list[RenderResult] | None:
    """The pages of one sheet, or None when the sheet must be redone page by page."""
    from html import escape

    from PIL import Image

    started = time.monotonic()
    width, height = settings.viewport
    columns, rows = sheet_grid(settings.viewport, len(pages))
    frames = "".join(
        f'<iframe name="tile-{index}" srcdoc="{escape(page, quote=True)}" width="{width}" height="{height}" '
        f'scrolling="no" style="position:absolute;left:{(index % columns) * width}px;'
        f'top:{(index // columns) * height}px;border:0;margin:0;padding:0;display:block"></iframe>'
        for index, page in enumerate(pages))
    sheet = f'<!DOCTYPE html><html><body style="margin:0">{frames}</body></html>'
    if slot.broken:
        await pool._build(slot)
    slot.begin(sheet)
    page = slot.page
    try:
        await page.set_viewport_size({"width": columns * width, "height": rows * height})

        async def capture():
            await pool._load(slot, settings)
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
            await quietly(page.set_viewport_size({"width": width, "height": height}))
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
        results.append(RenderResult(buffer.getvalue(), "ok", elapsed=elapsed, layout=layout, sandboxed=pool.sandboxed))
    if slot.renders_since_build >= _renew_after() // TILES_PER_SHEET:
        slot.broken = True
    return results


def _renew_after() -> int:
    from crystalvlm.web2code import render_pool

    return render_pool.RENEW_AFTER


async def render_tiled_all(pool: RenderPool, html_list: list[str], settings: RenderSettings,
                           progress: Callable[[RenderResult], None] | None,
                           results: list[RenderResult | None]) -> list[RenderResult | None]:
    """Fill `results` sheet by sheet (pages of unusual sheets page by page afterwards)."""
    capacity = sheet_capacity(settings.viewport)
    free: asyncio.Queue[Slot] = asyncio.Queue()
    for slot in pool._slots:
        free.put_nowait(slot)
    redo: list[int] = []

    async def job(start: int) -> None:
        pages = html_list[start:start + capacity]
        slot = await free.get()
        try:
            sheet = await asyncio.wait_for(render_sheet(pool, slot, pages, settings), settings.page_deadline_s)
        except asyncio.TimeoutError:  # the browser stopped answering: kill it; the pages are redone one by one
            await pool._drop_browser(kill=True)
            sheet = None
        except Exception:
            slot.broken, sheet = True, None
        finally:
            if slot.broken:
                await quietly(pool._discard(slot))
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
        # Written straight into `results`, so a call stopped at its deadline keeps these too.
        await pool._render_all([html_list[i] for i in redo], settings, progress, _Into(results, redo))
    return results


class _Into:
    """`results` seen through `indices`: item i of this list is item indices[i] of `results`."""

    def __init__(self, results: list, indices: list[int]) -> None:
        self.results, self.indices = results, indices

    def __getitem__(self, i: int):
        return self.results[self.indices[i]]

    def __setitem__(self, i: int, value) -> None:
        self.results[self.indices[i]] = value
