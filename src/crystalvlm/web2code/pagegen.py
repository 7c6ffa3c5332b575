"""A seeded, procedural web-page generator (the offline stand-in for Web2Code's DWCG pages).

`generate_page(seed, complexity)` always returns the same page for the same arguments.

* `complexity="full"` — a DWCG-like landing page: a `<style>` sheet plus 3-7 sections drawn from
  navigation header, hero, feature cards, list, table, contact form, quote and footer; a random
  topic, palette (light or dark), font family, corner radius and alignment. About 45 tags (18-71),
  DOM depth about 7 and 21 distinct tags, head included — a little larger than the DWCG averages
  Web2Code reports (28 tags, depth 5.3, 13.6 distinct tags).
* `complexity="simple"` — pages small enough for a tiny model to learn to write: a standards-mode
  document (`<!DOCTYPE html>`) whose `<body>` has a named background colour and holds 1-3 of
  `<h1>`, `<p>`, `<button>`, `<div>` with inline styles, named CSS colours and 1-3 words each from
  16 interface words ("home", "login", "contact", ...); about 110-250 characters of HTML.
  Why 16 words: a tiny vision tower has to learn to read them from a thousand-odd screenshots
  (docs/web-world-status.md has the probe measurements behind the choice).

Pages are self-contained (no scripts, no external resources) and every text colour contrasts
with what it stands on.
"""

from __future__ import annotations

import colorsys
import html as html_lib
import random
from dataclasses import dataclass, field

COMPLEXITIES = ("simple", "full")

# --------------------------------------------------------------------------- simple pages
SIMPLE_COLOURS = {  # CSS colour keywords and their sRGB values
    "white": (255, 255, 255), "black": (0, 0, 0), "red": (255, 0, 0), "green": (0, 128, 0),
    "blue": (0, 0, 255), "orange": (255, 165, 0), "purple": (128, 0, 128), "gray": (128, 128, 128),
    "yellow": (255, 255, 0), "pink": (255, 192, 203),
}
SIMPLE_BACKGROUNDS = ("white", "yellow", "pink", "gray", "black", "blue")
SIMPLE_WORDS = (
    "home about menu shop sale news help login contact hello welcome order search more blog cart"
).split()
SIMPLE_TAGS = ("html", "body", "h1", "p", "button", "div")


def _luminance(rgb: tuple[int, int, int]) -> float:
    def channel(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG contrast ratio (1..21)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _readable_on(rng: random.Random, background: str, minimum: float = 3.0) -> str:
    choices = [name for name, rgb in SIMPLE_COLOURS.items()
               if name != background and contrast_ratio(rgb, SIMPLE_COLOURS[background]) >= minimum]
    return rng.choice(choices)


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(SIMPLE_WORDS) for _ in range(rng.randint(low, high)))


def _simple_page(rng: random.Random) -> tuple[str, list[str], dict]:
    background = rng.choice(SIMPLE_BACKGROUNDS)
    parts, kinds = [], []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(("h1", "p", "button", "div"))
        kinds.append(kind)
        if kind == "h1":
            parts.append(f'<h1 style="color:{_readable_on(rng, background)}">{_words(rng, 1, 2)}</h1>')
        elif kind == "p":
            parts.append(f'<p style="color:{_readable_on(rng, background)}">{_words(rng, 1, 3)}</p>')
        elif kind == "button":
            fill = rng.choice([c for c in SIMPLE_COLOURS if c != background])
            parts.append(f'<button style="background:{fill};color:{_readable_on(rng, fill, 4.5)}">{_words(rng, 1, 1)}</button>')
        else:
            fill = rng.choice([c for c in SIMPLE_COLOURS if c != background])
            parts.append(f'<div style="background:{fill};color:{_readable_on(rng, fill, 4.5)};padding:8px">{_words(rng, 1, 2)}</div>')
    page = f'<!DOCTYPE html><html><body style="background:{background}">{"".join(parts)}</body></html>'
    return page, kinds, {"background": background}


# --------------------------------------------------------------------------- full pages
TOPICS: dict[str, dict[str, list[str]]] = {
    "bakery": {
        "brands": ["Golden Crust", "Flour & Fig", "Morning Loaf", "Sugar Bell"],
        "nav": ["Menu", "Cakes", "Order", "Visit", "About"],
        "headline": ["Fresh bread every morning", "Baked by hand since 1998", "Cakes for every celebration"],
        "blurb": ["Sourdough, pastries and seasonal tarts from our wood-fired oven.",
                  "Stop by for a warm croissant and a cup of coffee."],
        "features": ["Sourdough", "Croissants", "Birthday cakes", "Gluten-free", "Catering", "Coffee bar"],
        "items": ["Rye loaf", "Apple tart", "Cinnamon roll", "Lemon cake", "Baguette", "Scone"],
        "action": ["Order now", "See the menu", "Book a cake"],
    },
    "travel": {
        "brands": ["Wanderway", "Blue Compass", "Far Horizons", "Trailhead Tours"],
        "nav": ["Trips", "Destinations", "Deals", "Guides", "Contact"],
        "headline": ["Find your next adventure", "Travel light, travel far", "Islands, mountains and more"],
        "blurb": ["Hand-picked journeys with local guides and small groups.",
                  "Plan a trip in minutes and travel with confidence."],
        "features": ["Local guides", "Small groups", "Flexible dates", "Eco lodges", "Travel insurance", "24/7 support"],
        "items": ["Lisbon", "Kyoto", "Patagonia", "Iceland", "Marrakech", "Crete"],
        "action": ["Start planning", "View trips", "Get a quote"],
    },
    "fitness": {
        "brands": ["Iron Pulse", "Core Studio", "Peak Form", "Stride Club"],
        "nav": ["Classes", "Trainers", "Pricing", "Schedule", "Join"],
        "headline": ["Stronger every week", "Train with purpose", "Your gym, your pace"],
        "blurb": ["Group classes, personal coaching and open gym hours every day.",
                  "Programs for beginners and athletes alike."],
        "features": ["Yoga", "Spin", "Boxing", "Personal training", "Nutrition plans", "Sauna"],
        "items": ["Morning HIIT", "Power yoga", "Core blast", "Boxing basics", "Spin 45", "Mobility"],
        "action": ["Join today", "Book a class", "Try a free week"],
    },
    "software": {
        "brands": ["Cloudlet", "Datapane", "Syncwise", "Nimbus Labs"],
        "nav": ["Product", "Features", "Pricing", "Docs", "Sign in"],
        "headline": ["Ship faster with less effort", "All your data in one place", "Automate the boring parts"],
        "blurb": ["A simple platform to build, test and deploy in one click.",
                  "Dashboards, alerts and reports your whole team can use."],
        "features": ["Real-time sync", "Dashboards", "Integrations", "Role-based access", "Audit logs", "API"],
        "items": ["Starter", "Team", "Business", "Enterprise", "Education", "Nonprofit"],
        "action": ["Start free trial", "Request a demo", "Get started"],
    },
    "restaurant": {
        "brands": ["Olive & Thyme", "The Copper Pot", "Saffron House", "Harbor Grill"],
        "nav": ["Menu", "Reservations", "Events", "Gallery", "Contact"],
        "headline": ["Seasonal food, warm welcome", "Dinner by the harbor", "A taste of the Mediterranean"],
        "blurb": ["Local ingredients, an open kitchen and a wine list to match.",
                  "Reserve a table for lunch, dinner or a private event."],
        "features": ["Tasting menu", "Private dining", "Wine pairing", "Vegan options", "Live music", "Terrace"],
        "items": ["Grilled sea bass", "Lamb tagine", "Mushroom risotto", "Burrata salad", "Tiramisu", "Paella"],
        "action": ["Book a table", "View the menu", "Call us"],
    },
    "school": {
        "brands": ["Brightpath Academy", "Maple Learning", "Northside College", "Quill Institute"],
        "nav": ["Courses", "Admissions", "Campus", "Faculty", "News"],
        "headline": ["Learning that lasts", "Discover your potential", "Small classes, big ideas"],
        "blurb": ["Courses in science, arts and languages taught by experienced teachers.",
                  "Applications for the autumn term are now open."],
        "features": ["Science labs", "Language courses", "Scholarships", "Library", "Sports", "Mentoring"],
        "items": ["Biology", "History", "Mathematics", "French", "Design", "Computer science"],
        "action": ["Apply now", "Book a visit", "Download brochure"],
    },
}
FONT_STACKS = ("Arial, Helvetica, sans-serif", "Georgia, 'Times New Roman', serif",
               "'DejaVu Sans', Verdana, sans-serif", "'Courier New', monospace")
CARD_LINES = ("Everything you need for {}.", "Ask us about {}.", "The best {} in town.", "{} made simple.",
              "Try our {} this week.", "Loved by our regulars: {}.")
OPTIONAL_SECTIONS = ("features", "list", "table", "form", "quote")


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _hls(h: float, l: float, s: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(h % 1.0, l, s)
    return round(r * 255), round(g * 255), round(b * 255)


@dataclass(frozen=True)
class Palette:
    background: tuple[int, int, int]
    surface: tuple[int, int, int]  # cards, header band
    text: tuple[int, int, int]
    primary: tuple[int, int, int]  # buttons, headings accent
    on_primary: tuple[int, int, int]  # text on primary
    muted: tuple[int, int, int]


def _palette(rng: random.Random) -> Palette:
    hue = rng.random()
    dark = rng.random() < 0.3
    if dark:
        background, surface = _hls(hue, 0.10, 0.25), _hls(hue, 0.17, 0.25)
        text, muted = _hls(hue, 0.93, 0.10), _hls(hue, 0.75, 0.12)
        primary = _hls(hue + rng.uniform(0.3, 0.6), 0.65, 0.7)
    else:
        background, surface = _hls(hue, 0.98, 0.3), _hls(hue, 0.93, 0.35)
        text, muted = _hls(hue, 0.15, 0.25), _hls(hue, 0.35, 0.15)
        primary = _hls(hue + rng.uniform(0.3, 0.6), 0.40, 0.7)
    on_primary = (255, 255, 255) if contrast_ratio(primary, (255, 255, 255)) >= contrast_ratio(primary, (0, 0, 0)) else (0, 0, 0)
    return Palette(background, surface, text, primary, on_primary, muted)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _esc(text: str) -> str:
    return html_lib.escape(text, quote=True)


def _full_page(rng: random.Random) -> tuple[str, list[str], dict]:
    topic = rng.choice(sorted(TOPICS))
    bank = TOPICS[topic]
    brand = rng.choice(bank["brands"])
    palette = _palette(rng)
    font = rng.choice(FONT_STACKS)
    radius = rng.choice((0, 4, 8, 16))
    centered = rng.random() < 0.5
    width = rng.choice((720, 880, 960, 1100))
    columns = rng.choice((2, 3, 4))
    optional = rng.sample(OPTIONAL_SECTIONS, rng.randint(1, 4))
    sections = ["header", "hero", *optional, "footer"]
    if rng.random() < 0.15:
        sections.remove("header")

    css = [
        f"body{{margin:0;font-family:{font};background:{_hex(palette.background)};color:{_hex(palette.text)}}}",
        f".wrap{{max-width:{width}px;margin:0 auto;padding:0 24px}}",
        f"header{{background:{_hex(palette.surface)};padding:16px 0}}",
        f"header .wrap{{display:flex;align-items:center;justify-content:{'space-between' if not centered else 'center'};gap:24px}}",
        f".brand{{font-size:22px;font-weight:bold;color:{_hex(palette.primary)}}}",
        f"nav a{{margin:0 10px;color:{_hex(palette.text)};text-decoration:none}}",
        f".hero{{padding:{rng.choice((40, 56, 72))}px 0;text-align:{'center' if centered else 'left'}}}",
        f".hero h1{{font-size:{rng.choice((32, 38, 44))}px;margin:0 0 12px}}",
        f".hero p{{color:{_hex(palette.muted)};font-size:18px}}",
        f".btn{{background:{_hex(palette.primary)};color:{_hex(palette.on_primary)};border:0;padding:12px 22px;"
        f"border-radius:{radius}px;font-size:16px}}",
        f"section{{padding:24px 0}}",
        f"h2{{font-size:26px;margin:0 0 16px}}",
        f".grid{{display:grid;grid-template-columns:repeat({columns},1fr);gap:16px}}",
        f".card{{background:{_hex(palette.surface)};padding:16px;border-radius:{radius}px}}",
        f".card h3{{margin:0 0 8px;color:{_hex(palette.primary)}}}",
        f"table{{border-collapse:collapse;width:100%}}",
        f"th,td{{border-bottom:1px solid {_hex(palette.muted)};padding:8px;text-align:left}}",
        f"form{{display:flex;gap:12px;align-items:center;flex-wrap:wrap}}",
        f"input{{padding:10px;border:1px solid {_hex(palette.muted)};border-radius:{radius}px}}",
        f"blockquote{{font-size:20px;font-style:italic;margin:0;border-left:4px solid {_hex(palette.primary)};padding-left:16px}}",
        f"footer{{background:{_hex(palette.surface)};color:{_hex(palette.muted)};padding:20px 0;margin-top:24px;font-size:14px}}",
    ]
    body: list[str] = []
    for section in sections:
        if section == "header":
            links = "".join(f'<a href="#">{_esc(item)}</a>' for item in rng.sample(bank["nav"], rng.randint(3, 5)))
            body.append(f'<header><div class="wrap"><div class="brand">{_esc(brand)}</div><nav>{links}</nav></div></header>')
        elif section == "hero":
            body.append(f'<section class="hero"><div class="wrap"><h1>{_esc(rng.choice(bank["headline"]))}</h1>'
                        f'<p>{_esc(rng.choice(bank["blurb"]))}</p>'
                        f'<button class="btn">{_esc(rng.choice(bank["action"]))}</button></div></section>')
        elif section == "features":
            cards = "".join(
                f'<div class="card"><h3>{_esc(name)}</h3><p>{_esc(_sentence(rng.choice(CARD_LINES).format(name.lower())))}</p></div>'
                for name in rng.sample(bank["features"], columns))
            body.append(f'<section><div class="wrap"><h2>Why {_esc(brand)}</h2><div class="grid">{cards}</div></div></section>')
        elif section == "list":
            items = "".join(f"<li>{_esc(item)}</li>" for item in rng.sample(bank["items"], rng.randint(3, 5)))
            body.append(f'<section><div class="wrap"><h2>{_esc(rng.choice(["Popular", "Highlights", "Favourites"]))}</h2>'
                        f"<ul>{items}</ul></div></section>")
        elif section == "table":
            rows = "".join(f"<tr><td>{_esc(item)}</td><td>{rng.randint(5, 99)}.{rng.choice(['00', '50', '99'])}</td></tr>"
                           for item in rng.sample(bank["items"], rng.randint(2, 4)))
            body.append(f'<section><div class="wrap"><h2>Prices</h2><table><tr><th>Item</th><th>Price</th></tr>{rows}</table>'
                        "</div></section>")
        elif section == "form":
            body.append('<section><div class="wrap"><h2>Stay in touch</h2><form><label>Email</label>'
                        '<input type="email" placeholder="you@example.com">'
                        f'<button class="btn" type="button">{_esc(rng.choice(["Subscribe", "Send", "Sign up"]))}</button>'
                        "</form></div></section>")
        elif section == "quote":
            body.append(f'<section><div class="wrap"><blockquote>"{_esc(rng.choice(bank["headline"]))}. '
                        f'{_esc(rng.choice(["Highly recommended!", "We loved it.", "Five stars."]))}"</blockquote>'
                        f"<p>- {_esc(rng.choice(['Ana', 'Ben', 'Chloe', 'Dev', 'Emma', 'Farid']))} "
                        f"{rng.choice('KLMNPRST')}.</p></div></section>")
        elif section == "footer":
            body.append(f'<footer><div class="wrap"><p>&copy; {rng.randint(2019, 2025)} {_esc(brand)}. All rights reserved.</p>'
                        "</div></footer>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_esc(brand)}</title>\n<style>\n" + "\n".join(css) + "\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    return page, sections, {"topic": topic, "brand": brand, "palette": palette, "font": font, "columns": columns}


@dataclass(frozen=True)
class GeneratedPage:
    page_id: str
    seed: int
    complexity: str
    html: str
    sections: tuple[str, ...]  # the parts the page was built from, in order
    details: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        """A CodeAlpaca-style instruction describing the page (for text-to-HTML records)."""
        if self.complexity == "simple":
            return f"Create a page with a {self.details['background']} background and: {', '.join(self.sections)}."
        parts = ", ".join(self.sections)
        return f"Create a {self.details['topic']} website for {self.details['brand']} with these sections: {parts}."


def generate_page(seed: int, complexity: str = "full", page_id: str | None = None) -> GeneratedPage:
    if complexity not in COMPLEXITIES:
        raise ValueError(f"complexity must be one of {COMPLEXITIES}, got {complexity!r}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = random.Random(f"crystalvlm-page-{complexity}-{seed}")
    build = _simple_page if complexity == "simple" else _full_page
    html, sections, details = build(rng)
    return GeneratedPage(page_id or f"{complexity}_{seed:06d}", seed, complexity, html, tuple(sections), details)


def generate_pages(count: int, seed: int = 0, complexity: str = "full", prefix: str = "page") -> list[GeneratedPage]:
    """`count` pages whose seeds follow from `seed` (page i uses seed * 1_000_003 + i)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return [generate_page(seed * 1_000_003 + index, complexity, f"{prefix}_{index:06d}") for index in range(count)]
