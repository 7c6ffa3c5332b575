"""The constant WCGB baseline: one training page's HTML given as the answer for every screenshot.

A model that has learned nothing from the image can at best write the single page that resembles
all pages most. The simple pages never repeat exactly (the world keeps them distinct), so "the
most common page" is chosen by score instead of by count: among `n_candidates` training pages,
the one whose HTML, scored by WCGB against `n_references` other training pages, has the highest
mean Design2Code score. Held-out pages are never looked at. Beating this baseline means the model
reads the screenshot rather than writing a typical page.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from crystalvlm.web2code.metrics.wcgb import score_rendered
from crystalvlm.web2code.render import RenderPool


@dataclass(frozen=True)
class ConstantPage:
    record_id: str  # the training record whose HTML is the constant answer
    html: str
    train_design2code: float  # its mean Design2Code score against the reference training pages
    candidates: int
    references: int

    def as_dict(self) -> dict:
        return {"record_id": self.record_id, "html": self.html, "train_design2code": self.train_design2code,
                "candidates": self.candidates, "references": self.references}


def choose_constant_page(train_records: list[dict], pool: RenderPool, n_candidates: int = 24,
                         n_references: int = 48, seed: int = 0) -> ConstantPage:
    """The best constant answer among `n_candidates` training pages (DWCG records: the HTML is the
    assistant's reply), judged on `n_references` other training pages."""
    pages = [(record["id"], record["conversations"][1]["value"]) for record in train_records
             if len(record.get("conversations", [])) >= 2]
    if len(pages) < 2:
        raise ValueError(f"choosing a constant page needs at least 2 training pages, got {len(pages)}")
    rng = random.Random(f"constant-page-{seed}")
    rng.shuffle(pages)
    n_candidates = max(1, min(n_candidates, len(pages) // 2))
    candidates = pages[:n_candidates]
    references = pages[n_candidates:n_candidates + n_references]
    rendered = pool.render([html for _, html in candidates + references])
    candidate_renders, reference_renders = rendered[:len(candidates)], rendered[len(candidates):]
    usable_references = [result for result in reference_renders if result.ok and result.layout is not None]
    if not usable_references:
        raise RuntimeError("none of the reference training pages rendered; cannot choose a constant page")
    best: tuple[float, int] | None = None
    for index, candidate in enumerate(candidate_renders):
        if not candidate.ok:
            continue
        mean = sum(score_rendered(ref, candidate).design2code for ref in usable_references) / len(usable_references)
        if best is None or mean > best[0]:
            best = (mean, index)
    if best is None:
        raise RuntimeError("none of the candidate training pages rendered; cannot choose a constant page")
    record_id, html = candidates[best[1]]
    return ConstantPage(record_id, html, best[0], len(candidates), len(usable_references))
