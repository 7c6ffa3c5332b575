"""LLM-written web pages and page questions through any OpenAI-compatible endpoint (Web2Code's
DWCG and DWU recipe, with GPT-3.5 replaced by whatever model you point it at).

Three steps, each one prompt:
1. `propose_page_ideas` — CodeAlpaca-style self-instruct: show a few example page requests, ask
   for a numbered list of new, diverse ones;
2. `write_page` — one self-contained HTML file (inline CSS, no scripts, no external resources)
   for a request; the HTML is cut out of the reply (fenced block or `<html>...</html>`);
3. `write_page_qa` — question-answer pairs about a page's code (JSON list).

`write_llm_world` renders the pages and writes LLaVA records (code generation and QA). Requests
go through `openai_http` (the `openai` client, with the API key kept to the endpoint it is for).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from crystalvlm.web2code.converters import HTML_PROMPTS, html_record
from crystalvlm.web2code.dom_qa import QAPair, open_questions, qa_record, yes_no_questions
from crystalvlm.web2code.openai_http import ChatEndpoint, EndpointError, chat_completion
from crystalvlm.web2code.render import RenderPool

SEED_IDEAS = (
    "Create a landing page for a neighbourhood bakery with a menu section and opening hours.",
    "Design a personal portfolio page for a photographer with a gallery grid and a contact form.",
    "Build a pricing page for a project-management app with three plans in cards.",
    "Make a blog home page with a header, three article previews and a sidebar of categories.",
    "Create a page for a music festival with a line-up table, ticket prices and a countdown banner.",
    "Design a restaurant page with a hero image area, a two-column menu and a reservation form.",
    "Build a documentation page with a left navigation list, a title and code examples.",
    "Create a product page for running shoes with features, sizes and a buy button.",
    "Make a university department page with news items, staff list and a footer with links.",
    "Design a weather dashboard page showing a five-day forecast in a row of cards.",
    "Create a non-profit donation page with a progress bar, impact stories and a donate button.",
    "Build a login page with a centred form, a remember-me checkbox and a help link.",
)

IDEA_PROMPT = """Invent {n} new and varied requests, each asking for one web page written in HTML and CSS.
Rules:
1. Vary the purpose (business, personal, event, tool, organisation, ...) and the layout.
2. Each request is one or two sentences and names the sections or elements the page needs.
3. The page must work as one self-contained HTML file: no JavaScript, no external images or fonts.
4. Do not repeat the examples.

Examples:
{examples}

Answer with a numbered list of {n} requests, one per line."""

PAGE_PROMPT = """{instruction}

Write the complete page as one HTML file with the CSS in a <style> element. Use no JavaScript and no
external resources (no remote images, fonts or stylesheets; use coloured blocks where a picture would go).
Reply with the HTML only, inside a ```html code block."""

QA_PROMPT = """Here is the HTML of a web page:

```html
{html}
```

Write {n} question-answer pairs about what this page shows when rendered: its text, elements, colours and
layout. Answers must be short and follow from the code. Reply with a JSON list of objects with the keys
"question" and "answer" and nothing else."""


def parse_numbered_list(text: str) -> list[str]:
    """Items of a numbered ("1." / "1)") or bulleted list, one per line."""
    items = []
    for line in text.splitlines():
        match = re.match(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)\s*$", line)
        if match:
            items.append(match.group(1).strip().strip('"'))
    return items


def extract_html(reply: str) -> str:
    """The HTML document inside an LLM reply; raises ValueError when there is none."""
    fenced = re.search(r"```(?:html|HTML)?\s*\n(.*?)```", reply, re.DOTALL)
    candidate = fenced.group(1) if fenced else reply
    document = re.search(r"(<!DOCTYPE html.*?</html>|<html.*?</html>)", candidate, re.DOTALL | re.IGNORECASE)
    if document:
        return document.group(1).strip()
    if fenced and "<body" in candidate.lower():
        return candidate.strip()
    raise ValueError(f"no HTML document in the reply: {reply[:160]!r}")


def parse_qa_pairs(reply: str) -> list[QAPair]:
    """Question-answer pairs from a JSON list (possibly fenced) or from "Q: ... / A: ..." lines."""
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", reply, re.DOTALL)
    body = fenced.group(1) if fenced else reply
    start, end = body.find("["), body.rfind("]")
    if start != -1 and end > start:
        try:
            items = json.loads(body[start:end + 1])
            pairs = [QAPair(str(i["question"]).strip(), str(i["answer"]).strip(), "llm")
                     for i in items if isinstance(i, dict) and "question" in i and "answer" in i]
            return [p for p in pairs if p.question and p.answer]
        except json.JSONDecodeError:
            pass
    pairs, question = [], None
    for line in reply.splitlines():
        q = re.match(r"^\s*(?:\d+[.)]\s*)?Q(?:uestion)?\s*[:.]\s*(.+)$", line, re.IGNORECASE)
        a = re.match(r"^\s*A(?:nswer)?\s*[:.]\s*(.+)$", line, re.IGNORECASE)
        if q:
            question = q.group(1).strip()
        elif a and question:
            pairs.append(QAPair(question, a.group(1).strip(), "llm"))
            question = None
    return pairs


def propose_page_ideas(endpoint: ChatEndpoint, n: int, rng: random.Random, *, examples: int = 3,
                       temperature: float = 1.0) -> list[str]:
    shown = rng.sample(SEED_IDEAS, min(examples, len(SEED_IDEAS)))
    prompt = IDEA_PROMPT.format(n=n, examples="\n".join(f"{i}. {idea}" for i, idea in enumerate(shown, 1)))
    reply = chat_completion(endpoint, [{"role": "user", "content": prompt}], max_tokens=80 * n + 200,
                            temperature=temperature)
    ideas = [idea for idea in parse_numbered_list(reply) if idea not in SEED_IDEAS]
    if not ideas:
        raise EndpointError(f"{endpoint.url} gave no numbered list of page ideas: {reply[:200]!r}")
    return ideas[:n]


def write_page(endpoint: ChatEndpoint, instruction: str, *, max_tokens: int = 3000, temperature: float = 0.7) -> str:
    reply = chat_completion(endpoint, [{"role": "user", "content": PAGE_PROMPT.format(instruction=instruction)}],
                            max_tokens=max_tokens, temperature=temperature)
    try:
        return extract_html(reply)
    except ValueError as error:
        raise EndpointError(f"{endpoint.url}: {error}") from None


def write_page_qa(endpoint: ChatEndpoint, html: str, n: int = 5, *, max_tokens: int = 1200) -> list[QAPair]:
    reply = chat_completion(endpoint, [{"role": "user", "content": QA_PROMPT.format(html=html, n=n)}],
                            max_tokens=max_tokens, temperature=0.3)
    pairs = parse_qa_pairs(reply)
    if not pairs:
        raise EndpointError(f"{endpoint.url} gave no question-answer pairs: {reply[:200]!r}")
    return pairs[:n]


@dataclass
class LlmPage:
    instruction: str
    html: str
    qa: list[QAPair] = field(default_factory=list)


def generate_llm_pages(endpoint: ChatEndpoint, n_pages: int, *, seed: int = 0, qa_per_page: int = 4,
                       ideas_per_call: int = 10, progress: bool = False) -> tuple[list[LlmPage], list[str]]:
    """Up to `n_pages` pages with their questions, and the problems met on the way (a failed page
    is skipped and reported, not fatal). `progress` shows a bar over the pages being written."""
    rng = random.Random(seed)
    ideas: list[str] = []
    problems: list[str] = []
    attempts = 0
    while len(ideas) < n_pages and attempts < n_pages // max(1, ideas_per_call) + 3:
        attempts += 1
        try:
            ideas += [i for i in propose_page_ideas(endpoint, min(ideas_per_call, n_pages - len(ideas)), rng) if i not in ideas]
        except EndpointError as error:
            problems.append(f"ideas: {error}")
    pages = []
    chosen = ideas[:n_pages]
    if progress:
        from tqdm import tqdm

        chosen = tqdm(chosen, desc="LLM pages", unit=" pages")
    for idea in chosen:
        try:
            html = write_page(endpoint, idea)
            qa = write_page_qa(endpoint, html, qa_per_page) if qa_per_page else []
        except EndpointError as error:
            problems.append(f"page {idea[:60]!r}: {error}")
            continue
        pages.append(LlmPage(idea, html, qa))
    return pages, problems


def write_llm_world(pages: list[LlmPage], out_dir: str | Path, pool: RenderPool, *, prefix: str = "llm",
                    seed: int = 0, dom_questions_per_page: int = 4) -> dict:
    """Render `pages` to `out_dir/images/`, write `dwcg_llm.json` (screenshot -> HTML) and
    `dwu_llm.json` (screenshot + questions: the LLM's, then up to `dom_questions_per_page` read
    from the rendered DOM, which hold for what is on screen) as LLaVA records; returns counts and
    problems."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "pages").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    code_records, qa_records, problems = [], [], []
    for index, (page, result) in enumerate(zip(pages, pool.render([p.html for p in pages]))):
        name = f"{prefix}_{index:06d}"
        if result.png is None:
            problems.append(f"{name}: not rendered ({result.status}: {result.reason})")
            continue
        (out_dir / "images" / f"{name}.png").write_bytes(result.png)
        (out_dir / "pages" / f"{name}.html").write_text(page.html, encoding="utf-8")
        code_records.append(html_record(f"dwcg_{name}", f"{name}.png", page.html, rng.choice(HTML_PROMPTS)))
        pairs = list(page.qa)
        if dom_questions_per_page and result.layout is not None:
            pairs += open_questions(result.layout, rng, dom_questions_per_page - dom_questions_per_page // 2)
            pairs += yes_no_questions(result.layout, rng, dom_questions_per_page // 2)
        if pairs:
            qa_records.append(qa_record(f"dwu_{name}", f"{name}.png", pairs))
    (out_dir / "dwcg_llm.json").write_text(json.dumps(code_records, ensure_ascii=False, indent=1), encoding="utf-8")
    (out_dir / "dwu_llm.json").write_text(json.dumps(qa_records, ensure_ascii=False, indent=1), encoding="utf-8")
    return {"code_records": len(code_records), "qa_records": len(qa_records), "problems": problems,
            "image_folder": str(out_dir / "images")}
