"""The Chromium page pool: capture modes and sizes, the JavaScript switch, and network isolation."""

from __future__ import annotations

import io

import pytest
from web_helpers import assert_pool_healthy, block_texts, png_size

from crystalvlm.web2code.render import RenderSettings

pytestmark = pytest.mark.browser

TALL_PAGE = '<body style="margin:0"><div style="height:700px;background:#c00">top</div><p>bottom</p></body>'


def test_viewport_mode_captures_exactly_the_viewport(pool):
    [result] = pool.render([TALL_PAGE])
    assert result.status == "ok", result.reason
    assert png_size(result.png) == (320, 240)
    assert result.layout.height == 240 and result.layout.document_height > 700
    assert not result.layout.fits  # the page continues below the viewport
    assert block_texts(result) == ["top"]  # "bottom" lies outside the captured area


def test_full_page_mode_captures_the_whole_document(pool):
    [result] = pool.render([TALL_PAGE], full_page=True)
    assert result.status == "ok", result.reason
    width, height = png_size(result.png)
    assert width == 320
    assert height == result.layout.document_height and height > 700
    assert block_texts(result) == ["top", "bottom"]


def test_results_come_back_in_input_order_across_workers(pool):
    pages = [f"<p>page number {index}</p>" for index in range(5)]
    results = pool.render(pages)
    assert [block_texts(r) for r in results] == [[f"page number {index}"] for index in range(5)]


def test_javascript_is_off_unless_asked_for(pool, js_pool):
    page = "<p id='t'>static text</p><script>document.getElementById('t').textContent = 'scripted text'</script>"
    [without] = pool.render([page])
    [with_js] = js_pool.render([page])
    assert RenderSettings().java_script is False
    assert block_texts(without) == ["static text"]
    assert block_texts(with_js) == ["scripted text"]


def test_settings_refuse_impossible_values():
    with pytest.raises(ValueError, match="viewport"):
        RenderSettings(viewport=(0, 240))
    with pytest.raises(ValueError, match="timeout_s"):
        RenderSettings(timeout_s=0)
    with pytest.raises(ValueError, match="max_page_height"):
        RenderSettings(viewport=(320, 240), max_page_height=100)


def test_render_refuses_a_bare_string(pool):
    with pytest.raises(TypeError, match="list of HTML strings"):
        pool.render("<p>one page</p>")


def test_non_string_and_oversized_input_are_errors_not_crashes(pool):
    big = "<p>x</p>" * (pool.settings.max_html_chars // 8 + 1)
    results = pool.render([b"<p>bytes</p>", big, "<p>fine</p>"])
    assert [r.status for r in results] == ["error", "error", "ok"]
    assert "expected a str" in results[0].reason
    assert "max_html_chars" in results[1].reason


def test_progress_is_reported_once_per_page(pool):
    seen = []
    pool.render(["<p>a</p>", "<p>b</p>", "<p>c</p>"], progress=seen.append)
    assert len(seen) == 3 and all(result.ok for result in seen)


def test_a_page_without_outside_references_blocks_nothing(pool, canary):
    before = pool.traffic.blocked
    [result] = pool.render(['<p style="color:red">inline only</p><img src="data:image/gif;base64,'
                            'R0lGODlhAQABAAAAACw=">'])
    assert result.status == "ok", result.reason
    assert result.blocked_requests == 0 and pool.traffic.blocked == before
    assert canary.hits == []


def test_a_slot_is_renewed_once_per_renew_after_renders_not_on_every_render_after(monkeypatch):
    # A slot's context is rebuilt after RENEW_AFTER renders to free memory; the count must restart
    # with the new context, or every later render pays for a rebuild (3x slower on long runs).
    from crystalvlm.web2code import render_pool as render_module

    monkeypatch.setattr(render_module, "RENEW_AFTER", 3)
    with render_module.RenderPool(RenderSettings(viewport=(64, 64), workers=1)) as single:
        results = single.render([f"<p>{index}</p>" for index in range(10)])
        assert all(r.ok for r in results)
        assert block_texts(results[-1]) == ["9"]
        assert single.context_rebuilds == 3  # after renders 3, 6 and 9


def _pixels(png: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


STANDARDS_PAGES = [
    '<!DOCTYPE html><html><body style="background:pink"><h1 style="color:navy">Tiled one</h1></body></html>',
    '<!DOCTYPE html><body><p style="color:#c00">red words</p><button>Press</button></body>',
    '<!doctype html><div style="height:600px;background:teal">taller than its window</div><p>below</p>',
    '<!DOCTYPE html><table border="1"><tr><td>a</td><td>b</td></tr></table><ul><li>one</li><li>two</li></ul>',
    '<!DOCTYPE html><body style="margin:0"><div style="width:50vw;height:50vh;background:gold">quarter</div></body>',
]


def test_tiled_rendering_gives_each_page_the_pixels_and_layout_it_has_alone(pool):
    alone = pool.render(STANDARDS_PAGES)
    tiled = pool.render_tiled(STANDARDS_PAGES)
    for index, (single, tile) in enumerate(zip(alone, tiled)):
        assert single.ok and tile.ok, (index, single.reason, tile.reason)
        assert png_size(tile.png) == pool.settings.viewport
        assert (_pixels(tile.png) == _pixels(single.png)).all(), f"page {index} differs"
        assert tile.layout == single.layout, f"page {index} layout differs"
    assert not tiled[2].layout.fits and tiled[0].layout.fits
    assert block_texts(tiled[4]) == ["quarter"]


def test_tiled_rendering_refuses_quirks_mode_pages(pool):
    with pytest.raises(ValueError, match="page 1 does not start with <!DOCTYPE html>"):
        pool.render_tiled([STANDARDS_PAGES[0], "<p>no doctype</p>"])


def test_a_page_that_reaches_out_on_a_sheet_is_redone_alone_with_its_own_count(pool, canary):
    reaching = '<!DOCTYPE html><p>fetches</p><img src="http://example.com/pixel.png">'
    results = pool.render_tiled(STANDARDS_PAGES[:2] + [reaching] + STANDARDS_PAGES[2:])
    assert [r.status for r in results] == ["ok"] * 6
    assert [r.blocked_requests for r in results] == [0, 0, 1, 0, 0, 0]
    assert block_texts(results[2]) == ["fetches"] and block_texts(results[0]) == ["Tiled one"]
    assert canary.hits == []


def test_a_hostile_page_on_a_sheet_gets_its_own_status_and_the_pool_goes_on(js_pool):
    endless = "<!DOCTYPE html><p>spins</p><script>while (true) {}</script>"
    results = js_pool.render_tiled([STANDARDS_PAGES[0], endless, STANDARDS_PAGES[1]])
    assert [r.status for r in results] == ["ok", "timeout", "ok"]
    assert block_texts(results[2]) == ["red words", "Press"]
    assert_pool_healthy(js_pool)


def test_word_boxes_name_each_word_where_the_browser_drew_it(pool, js_pool):
    page = ('<!DOCTYPE html><body style="margin:0"><p style="margin:0;width:120px">red words here</p>'
            '<button>Go on</button></body>')
    (result,) = pool.render([page])
    paragraph, button = result.layout.text_blocks
    assert [w.text for w in paragraph.words] == ["red", "words", "here"]
    assert [w.text for w in button.words] == ["Go", "on"]
    for block in (paragraph, button):
        bx, by, bw, bh = block.bbox
        for word in block.words:
            x, y, w, h = word.bbox
            assert w > 0 and h > 0
            assert bx - 1e-6 <= x and x + w <= bx + bw + 1e-6 and by - 1e-6 <= y and y + h <= by + bh + 1e-6
    first, second, _ = paragraph.words
    assert first.bbox[0] + first.bbox[2] <= second.bbox[0]  # one line, left to right
    assert button.words[0].bbox[1] > first.bbox[1]  # the button sits below the paragraph
    (tiled,) = pool.render_tiled([page])
    assert tiled.layout == result.layout
    (plain,) = js_pool.render([page])  # a pool that was not asked for word boxes reads none
    assert [block.text for block in plain.layout.text_blocks] == ["red words here", "Go on"]
    assert all(block.words == () for block in plain.layout.text_blocks)


def test_the_render_facade_keeps_every_public_name_of_the_modules_it_joins():
    # Code across the project imports these from crystalvlm.web2code.render; the split into
    # browser/isolation/render_settings/render_pool/tiling/render_files must not break it.
    from crystalvlm.web2code import browser, render, render_files, render_pool, render_settings, tiling

    for name in ("RenderPool", "RenderSettings", "RenderResult", "render_html", "render_files", "collect_html_inputs",
                 "layout_to_json", "RenderedFile", "BrowserUnavailable", "browser_available", "find_chromium",
                 "STANDARDS_MODE", "TILES_PER_SHEET", "TrafficCounts", "sandbox_decision"):
        assert name in render.__all__ and hasattr(render, name), name
    assert render.RenderPool is render_pool.RenderPool and render.RenderSettings is render_settings.RenderSettings
    assert render.render_files is render_files.render_files and render.STANDARDS_MODE is tiling.STANDARDS_MODE
    assert render.find_chromium is browser.find_chromium
