"""What a rendered page looks like, read from the browser's DOM after layout.

The renderer runs `EXTRACT_LAYOUT_JS` inside the page (DevTools evaluation works even when the
page's own JavaScript is off) and turns its plain-JSON answer into a `PageLayout`:

* `text_blocks` — Design2Code-style text blocks: the visible text of each block-level container
  (inline children such as `<b>`, `<a>`, `<span>` belong to their container's block), its bounding
  box as fractions of the captured image (x, y, w, h in [0, 1]) and its majority text colour;
* `elements` — every visible element with its box in CSS pixels, colours and text (for the DOM
  question-answer generator);
* `dom` — the parsed element tree (tags only), for TreeBLEU; sent flat (tag + parent index in
  pre-order) so that arbitrarily deep pages come back intact.

Only what lies inside the captured area counts (the viewport, or the page down to the height cap
in full-page mode); boxes are clipped to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from crystalvlm.web2code.dom_tree import DomNode

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class WordBox:
    text: str  # one whitespace-separated word as written in the page
    bbox: tuple[float, float, float, float]  # x, y, w, h as fractions of the captured image


@dataclass(frozen=True)
class TextBlock:
    text: str
    bbox: tuple[float, float, float, float]  # x, y, w, h as fractions of the captured image
    color: RGB
    words: tuple[WordBox, ...] = ()  # each word's box, when the render asked for them (RenderSettings.word_boxes)

    @property
    def area(self) -> float:
        return self.bbox[2] * self.bbox[3]

    @property
    def center(self) -> tuple[float, float]:
        return self.bbox[0] + self.bbox[2] / 2, self.bbox[1] + self.bbox[3] / 2


@dataclass(frozen=True)
class ElementBox:
    tag: str
    text: str  # all text inside, whitespace collapsed, at most 300 characters
    own_text: str  # text directly inside this element (not in child elements)
    bbox: tuple[float, float, float, float]  # x, y, w, h in CSS pixels, clipped to the capture
    color: RGB
    background: RGB | None  # None when transparent
    font_size: float
    bold: bool
    depth: int  # 0 for <body>'s children
    element_id: str = ""
    classes: str = ""


@dataclass(frozen=True)
class PageLayout:
    width: int  # captured width in CSS pixels
    height: int  # captured height in CSS pixels
    document_height: int  # the page's full scroll height (may exceed `height`)
    document_width: int  # the page's full scroll width (exceeds `width` when content overflows)
    background: RGB
    text_blocks: tuple[TextBlock, ...] = ()
    elements: tuple[ElementBox, ...] = ()
    dom: DomNode | None = None
    truncated: bool = False  # True when the page had more nodes than the extraction cap
    title: str = ""

    @property
    def fits(self) -> bool:
        """True when the whole page is inside the capture (nothing scrolled out of view)."""
        return self.document_height <= self.height and self.document_width <= self.width

    @staticmethod
    def from_json(data: dict) -> "PageLayout":
        width = max(1, int(data["width"]))
        height = max(1, int(data["height"]))
        blocks = []
        for block in data.get("blocks", []):
            x0, y0, x1, y1 = block["box"]
            text = " ".join(block["text"].split())
            if not text:
                continue
            blocks.append(TextBlock(
                text=text,
                bbox=(x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height),
                color=_rgb(block["color"]),
                words=tuple(WordBox(word, (wx0 / width, wy0 / height, (wx1 - wx0) / width, (wy1 - wy0) / height))
                            for word, wx0, wy0, wx1, wy1 in block.get("words", [])),
            ))
        elements = []
        for item in data.get("elements", []):
            x0, y0, x1, y1 = item["box"]
            background = item.get("background")
            elements.append(ElementBox(
                tag=item["tag"],
                text=item.get("text", ""),
                own_text=item.get("own", ""),
                bbox=(x0, y0, x1 - x0, y1 - y0),
                color=_rgb(item["color"]),
                background=_rgb(background) if background is not None else None,
                font_size=float(item.get("fontSize", 0.0)),
                bold=bool(item.get("bold", False)),
                depth=int(item.get("depth", 0)),
                element_id=item.get("id", ""),
                classes=item.get("cls", ""),
            ))
        dom = DomNode.from_flat(data["dom"]["tags"], data["dom"]["parents"]) if data.get("dom") else None
        return PageLayout(
            width=width,
            height=height,
            document_height=int(data.get("documentHeight", height)),
            document_width=int(data.get("documentWidth", width)),
            background=_rgb(data.get("background", [255, 255, 255])),
            text_blocks=tuple(blocks),
            elements=tuple(elements),
            dom=dom,
            truncated=bool(data.get("truncated", False)),
            title=data.get("title", ""),
        )


def _rgb(values) -> RGB:
    return (int(round(values[0])), int(round(values[1])), int(round(values[2])))


# Runs in the page; returns plain JSON. `opts`: {maxNodes, fullPage, maxHeight, wantLayout, wordBoxes}.
# Boxes are [x0, y0, x1, y1] in CSS pixels of the page, clipped to the captured area.
EXTRACT_LAYOUT_JS = r"""
(opts) => {
  const de = document.documentElement, body = document.body;
  const vw = window.innerWidth, vh = window.innerHeight;
  const documentHeight = Math.max(de ? de.scrollHeight : 0, body ? body.scrollHeight : 0, vh);
  const documentWidth = Math.max(de ? de.scrollWidth : 0, body ? body.scrollWidth : 0, vw);
  const capW = vw;
  const capH = opts.fullPage ? Math.max(1, Math.min(documentHeight, opts.maxHeight)) : vh;
  const out = {width: capW, height: capH, documentHeight, documentWidth, truncated: false,
               title: (document.title || '').slice(0, 300)};
  if (!opts.wantLayout) return out;
  const sx = window.scrollX, sy = window.scrollY;
  const canvas = document.createElement('canvas');
  canvas.width = 1; canvas.height = 1;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const colourCache = new Map();
  // Any CSS colour -> [r, g, b, alpha]; rgb()/rgba() parsed directly, others (oklch, lab, color())
  // painted on a 1x1 canvas and read back.
  function rgba(value) {
    if (colourCache.has(value)) return colourCache.get(value);
    let result;
    const m = /^rgba?\(\s*([\d.]+)[,\s]+([\d.]+)[,\s]+([\d.]+)(?:\s*[,/]\s*([\d.]+%?))?\s*\)$/.exec(value);
    if (m) {
      let a = m[4] === undefined ? 1 : (m[4].endsWith('%') ? parseFloat(m[4]) / 100 : parseFloat(m[4]));
      result = [+m[1], +m[2], +m[3], a];
    } else {
      ctx.clearRect(0, 0, 1, 1);
      ctx.fillStyle = '#000';
      ctx.fillStyle = value;
      ctx.fillRect(0, 0, 1, 1);
      const d = ctx.getImageData(0, 0, 1, 1).data;
      result = [d[0], d[1], d[2], d[3] / 255];
    }
    colourCache.set(value, result);
    return result;
  }
  function clip(x, y, w, h) {
    const x0 = Math.max(0, x), y0 = Math.max(0, y);
    const x1 = Math.min(capW, x + w), y1 = Math.min(capH, y + h);
    return (x1 > x0 && y1 > y0) ? [x0, y0, x1, y1] : null;
  }
  function union(a, b) {
    if (!a) return b;
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];
  }
  // The union of a range's line pieces on screen, clipped to the capture; null when none shows.
  function visibleBox(range) {
    let box = null;
    for (const r of range.getClientRects()) {
      if (r.width <= 0 || r.height <= 0) continue;
      const c = clip(r.left + sx, r.top + sy, r.width, r.height);
      if (c) box = union(box, c);
    }
    return box;
  }
  const SKIP = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'HEAD', 'TITLE', 'META', 'LINK']);
  const containerCache = new Map();
  // The nearest ancestor that is not laid out inline: the text block a text node belongs to.
  function containerOf(el) {
    const start = el;
    if (containerCache.has(start)) return containerCache.get(start);
    while (el && el !== body) {
      const d = getComputedStyle(el).display;
      if (d !== 'inline' && d !== 'contents') break;
      el = el.parentElement;
    }
    const found = el || body;
    containerCache.set(start, found);
    return found;
  }
  let visited = 0, wordsSeen = 0;
  const groups = new Map(), order = [];
  // Depth-first walk by hand: TreeWalker filters are callbacks, which a page with JavaScript
  // disabled refuses to run.
  if (body) {
    const stack = [body];
    while (stack.length) {
      const node = stack.pop();
      if (++visited > opts.maxNodes) { out.truncated = true; break; }
      if (node.nodeType === 1) {
        if (SKIP.has(node.tagName)) continue;
        if (node.tagName === 'BR' && node.parentElement) {
          const g = groups.get(containerOf(node.parentElement));
          if (g) g.text += ' ';
        }
        const kids = node.childNodes;
        for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]);
        continue;
      }
      if (node.nodeType !== 3) continue;
      const raw = node.data;
      if (!raw || !raw.trim()) continue;
      const parent = node.parentElement;
      if (!parent) continue;
      const st = getComputedStyle(parent);
      if (st.visibility !== 'visible' || parseFloat(st.opacity) === 0) continue;
      const colour = rgba(st.color);
      if (colour[3] === 0) continue;
      const range = document.createRange();
      range.selectNodeContents(node);
      const box = visibleBox(range);
      if (!box) continue;
      const container = containerOf(parent);
      let g = groups.get(container);
      if (!g) { g = {text: '', box: null, colours: new Map(), last: null, words: []}; groups.set(container, g); order.push(g); }
      // Inline pieces set apart on screen (nav links with margins, a new line) read as separate words.
      const first = range.getClientRects()[0];
      if (g.last && first && (first.left > g.last.right + 0.5 || first.top >= g.last.bottom)) g.text += ' ';
      const rects = range.getClientRects();
      if (rects.length) g.last = rects[rects.length - 1];
      g.text += raw;
      g.box = union(g.box, box);
      if (opts.wordBoxes) {
        // Each word's own box (the union of its line pieces), for training a reader to say which word
        // sits where; capped like the node walk so a huge text cannot stall the read-out.
        const word = /\S+/g;
        let m;
        while ((m = word.exec(raw))) {
          if (++wordsSeen > opts.maxNodes) { out.truncated = true; break; }
          const piece = document.createRange();
          piece.setStart(node, m.index);
          piece.setEnd(node, m.index + m[0].length);
          const wordBox = visibleBox(piece);
          if (wordBox) g.words.push([m[0], ...wordBox]);
        }
      }
      const key = colour.slice(0, 3).join(',');
      g.colours.set(key, (g.colours.get(key) || 0) + raw.trim().length);
    }
  }
  out.blocks = order.map(g => {
    let best = null, bestCount = -1;
    for (const [key, count] of g.colours) if (count > bestCount) { best = key; bestCount = count; }
    return {text: g.text.replace(/\s+/g, ' ').trim(), box: g.box, color: best.split(',').map(Number),
            words: g.words};
  }).filter(b => b.text.length > 0);

  const elements = [];
  if (body) {
    const all = body.getElementsByTagName('*');
    if (all.length > opts.maxNodes) out.truncated = true;
    for (let i = 0; i < all.length && i < opts.maxNodes; i++) {
      const el = all[i];
      if (SKIP.has(el.tagName)) continue;
      const r = el.getBoundingClientRect();
      if (r.width <= 0 || r.height <= 0) continue;
      const c = clip(r.left + sx, r.top + sy, r.width, r.height);
      if (!c) continue;
      const st = getComputedStyle(el);
      if (st.visibility !== 'visible') continue;
      let own = '';
      for (const child of el.childNodes) if (child.nodeType === 3) own += child.data;
      let depth = 0;
      for (let p = el.parentElement; p && p !== body; p = p.parentElement) depth++;
      const bg = rgba(st.backgroundColor);
      elements.push({
        tag: el.tagName.toLowerCase(), id: (el.id || '').slice(0, 100),
        cls: (typeof el.className === 'string' ? el.className : '').slice(0, 200),
        text: (el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 300),
        own: own.replace(/\s+/g, ' ').trim().slice(0, 300),
        box: c, color: rgba(st.color).slice(0, 3), background: bg[3] > 0 ? bg.slice(0, 3) : null,
        fontSize: parseFloat(st.fontSize) || 0, bold: (parseInt(st.fontWeight) || 400) >= 600, depth,
      });
    }
  }
  out.elements = elements;

  let pageBg = body ? rgba(getComputedStyle(body).backgroundColor) : [0, 0, 0, 0];
  if (pageBg[3] === 0 && de) pageBg = rgba(getComputedStyle(de).backgroundColor);
  out.background = pageBg[3] === 0 ? [255, 255, 255] : pageBg.slice(0, 3);

  // The element tree, flat and in pre-order: tags[i] and the index of its parent (-1 for the
  // root). Nested arrays would be simpler but Playwright refuses to return a deeply nested value,
  // and a hostile page can be thousands of levels deep.
  const tags = [], parents = [];
  if (de) {
    const stack = [[de, -1]];
    while (stack.length) {
      if (tags.length >= opts.maxNodes) { out.truncated = true; break; }
      const [el, parent] = stack.pop();
      const index = tags.length;
      tags.push(el.tagName.toLowerCase());
      parents.push(parent);
      const kids = el.children;
      for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], index]);
    }
  }
  out.dom = de ? {tags, parents} : null;
  return out;
}
"""
