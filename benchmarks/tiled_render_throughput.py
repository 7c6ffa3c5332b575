"""Tiled rendering: many small pages per screenshot (`RenderPool.render_tiled`) against one page
per screenshot (`RenderPool.render`), same warm pool, same pages, same run.

The pages are the web world's simple pages at its 128x128 viewport (what `crystalvlm quickstart
--world web` renders by the thousand). Both paths read the layout (text blocks, elements, DOM) as
the world needs it. It prints pages/s for each and the ratio, checks that every tile has exactly
the pixels and the layout of the page rendered alone, and writes the figures with device and
versions to benchmarks/results/tiled_render_throughput.json.

    .venv/bin/python benchmarks/tiled_render_throughput.py [--pages 640] [--width 128 --height 128]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from PIL import Image
from render_throughput import _cpu_name  # the sibling benchmark's (this folder is on sys.path when run)

from crystalvlm.web2code.pagegen import generate_page
from crystalvlm.web2code.render import TILES_PER_SHEET, RenderPool, RenderSettings, find_chromium

RESULTS = Path(__file__).resolve().parent / "results" / "tiled_render_throughput.json"


def _pixel_digest(png: bytes | None) -> str | None:
    """Digest of the decoded pixels (PNG encoders differ byte-wise for the same image)."""
    if png is None:
        return None
    with Image.open(io.BytesIO(png)) as image:
        return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def _timed(render, pages: list[str]) -> tuple[float, list]:
    started = time.perf_counter()
    results = render(pages)
    return len(pages) / (time.perf_counter() - started), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=640)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    pages = [generate_page(args.seed * 100_003 + index, "simple").html for index in range(args.pages)]
    settings = RenderSettings(viewport=(args.width, args.height), workers=args.workers)
    load_before = os.getloadavg()
    with RenderPool(settings) as pool:
        pool.render(pages[:8])  # warm both paths' contexts before timing
        pool.render_tiled(pages[:8])
        single_rate, single = _timed(pool.render, pages)
        tiled_rate, tiled = _timed(pool.render_tiled, pages)
        version = pool.browser_version
    same_pixels = sum(_pixel_digest(a.png) == _pixel_digest(b.png) for a, b in zip(single, tiled))
    same_layout = sum(a.layout == b.layout for a, b in zip(single, tiled))
    failed = sum(not r.ok for r in single + tiled)
    ratio = tiled_rate / single_rate
    record = {
        "benchmark": "tiled_render_throughput",
        "what": "pages/s rendering the web world's simple pages: RenderPool.render_tiled vs RenderPool.render",
        "device": {"cpu": _cpu_name(), "logical_cores": os.cpu_count(), "platform": platform.platform(),
                   "load_average_before": [round(v, 2) for v in load_before],
                   "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "versions": {"chromium": version, "chromium_binary": find_chromium(),
                     "playwright": metadata.version("playwright"), "python": platform.python_version(),
                     "crystalvlm": metadata.version("crystalvlm")},
        "settings": {"pages": args.pages, "viewport": [args.width, args.height], "complexity": "simple",
                     "seed": args.seed, "workers": args.workers, "tiles_per_sheet": TILES_PER_SHEET,
                     "extract_layout": True},
        "one_page_per_screenshot_pages_per_s": single_rate,
        "tiled_pages_per_s": tiled_rate,
        "ratio_tiled_vs_one_page": ratio,
        "identical_pixels": f"{same_pixels}/{args.pages}",
        "identical_layouts": f"{same_layout}/{args.pages}",
        "failed": failed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"pages: {args.pages} simple pages at {args.width}x{args.height}, Chromium {version}, "
          f"{_cpu_name()} ({os.cpu_count()} cores, load {load_before[0]:.1f})")
    print(f"one page per screenshot : {single_rate:7.2f} pages/s")
    print(f"tiled ({TILES_PER_SHEET} per sheet)   : {tiled_rate:7.2f} pages/s")
    print(f"ratio tiled/one page    : {ratio:.2f}x")
    print(f"identical pixels {same_pixels}/{args.pages}, identical layouts {same_layout}/{args.pages}")
    print(f"wrote {args.out}")
    return 1 if failed or same_pixels != args.pages else 0


if __name__ == "__main__":
    sys.exit(main())
