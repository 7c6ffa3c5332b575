"""WCGB and WUB as evaluation tasks: the same `Task` interface as POPE or MME, so `crystalvlm eval`
and the quickstart run them through the batched generation runner.

* `WcgbTask` (Web2Code's code-generation benchmark): each sample is a screenshot and the prompt
  "Please generate html code for the given image"; the answer is HTML. Scoring renders the
  reference and the generated page in Chromium with the same viewport and compares them with
  `metrics.wcgb` (Design2Code's block-match, text, position, colour, a visual similarity,
  TreeBLEU and the Design2Code overall score). A generated page that does not render scores 0.
* `WubTask` (Web2Code's webpage-understanding benchmark): Yes/No questions about a screenshot,
  scored with Web2Code's matching rule (`wub.wub_correct`), accuracy in percent as Web2Code
  reports it. Web2Code asks a second time when the first reply is not a bare yes/no; a batched
  runner asks once, so a rambling reply simply counts as wrong here.

Rendering is passed in: a WCGB task scores with the renderer it is given (`use_renderer`, any
object with `render(list_of_html) -> list[RenderResult]` and `settings.viewport`, such as
`web2code.render.RenderPool`); the caller owns the browser and closes it.

Files are the ones `synth.write_web_world` writes (`eval/wcgb.jsonl`, `eval/wub.jsonl`, images in
`images/`); any folder laid out the same way works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from crystalvlm.eval.tasks.base import EvalSample, Task, TaskScore, safe_ratio
from crystalvlm.eval.tasks.files import BenchmarkFormatError, read_json_lines, require_keys
from crystalvlm.web2code.metrics.wcgb import METRIC_NAMES, WcgbScores, score_rendered, summarize
from crystalvlm.web2code.render import RenderResult
from crystalvlm.web2code.wub import is_yes_or_no, wub_correct

__all__ = ["METRIC_NAMES", "ScoredPage", "WcgbTask", "WubTask", "build_web_task", "extract_html", "summarize_pages",
           "wub_majority_answer"]

WCGB_FILE = "wcgb.jsonl"
WUB_FILE = "wub.jsonl"
# Simple generated pages are about 50 tokens of HTML with the tiny tokenizer; real pages need far more.
WCGB_MAX_NEW_TOKENS = 1024
WUB_MAX_NEW_TOKENS = 8

_FENCE = re.compile(r"```(?:html|HTML)?\s*\n?(.*?)(?:```|$)", re.DOTALL)


def extract_html(text: str) -> str:
    """The HTML inside a reply: the first fenced block when the model wrote Markdown fences,
    otherwise the reply itself (stripped)."""
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip()


@dataclass
class ScoredPage:
    """One WCGB sample after scoring: the renders are kept for reports (side-by-side examples)."""
    sample_id: str
    reference: RenderResult
    candidate: RenderResult
    candidate_html: str
    scores: WcgbScores


class WcgbTask(Task):
    """WCGB over a `wcgb.jsonl` file: `{"id", "image", "html", "prompt"}` per held-out page.

    `renderer` (or `use_renderer` later) renders pages for scoring; its viewport must match the
    screenshots. Reference pages are rendered once per task and kept. `score_samples` returns
    the scored pages (renders included) beside the metrics, for reports."""

    name = "wcgb"
    requires_renderer = True

    def __init__(self, questions: Path, image_folder: Path, *, renderer=None,
                 viewport: tuple[int, int] | None = None, max_new_tokens: int | None = None) -> None:
        self.questions = Path(questions)
        self.image_folder = Path(image_folder)
        self.max_new_tokens = int(max_new_tokens or WCGB_MAX_NEW_TOKENS)
        self._renderer = None
        self._viewport = tuple(viewport) if viewport else None
        self._references: dict[str, RenderResult] = {}
        if renderer is not None:
            self.use_renderer(renderer)

    def load_samples(self) -> list[EvalSample]:
        samples = []
        for number, item in read_json_lines(self.questions, "WCGB pages"):
            where = f"{self.questions}:{number}"
            require_keys(item, ("id", "image", "html"), where)
            if not isinstance(item["html"], str) or not item["html"].strip():
                raise BenchmarkFormatError(f"{where}: 'html' must be a non-empty string of HTML")
            image = self.image_folder / item["image"]
            if not image.is_file():
                raise BenchmarkFormatError(f"{where}: screenshot {image} not found")
            prompt = item.get("prompt") or "Please generate html code for the given image"
            samples.append(EvalSample(str(item["id"]), image, prompt, item["html"], {}))
        return samples

    # ------------------------------------------------------------------ rendering
    def viewport(self) -> tuple[int, int]:
        """The render size: as given, else the size of the first reference screenshot (the world
        renders screenshots at the viewport size, device scale 1)."""
        if self._viewport is None:
            from PIL import Image

            self.samples()
            samples = self._loaded or []  # every page, whatever the selection
            if not samples:
                raise BenchmarkFormatError(f"{self.questions}: no pages, so no viewport to render at")
            with Image.open(samples[0].image) as image:
                self._viewport = (image.width, image.height)
        return self._viewport  # type: ignore[return-value]

    def use_renderer(self, renderer) -> None:
        """Score with `renderer` from now on; refused when it renders at another size than the screenshots."""
        if tuple(renderer.settings.viewport) != tuple(self.viewport()):
            raise ValueError(f"the renderer's viewport {tuple(renderer.settings.viewport)} differs from the "
                             f"screenshots' {tuple(self.viewport())} ({self.questions})")
        self._renderer = renderer

    def renderer(self):
        if self._renderer is None:
            raise ValueError("WCGB scoring needs a renderer: pass renderer=RenderPool(RenderSettings(viewport=...)) "
                             "or call use_renderer()")
        return self._renderer

    def _reference_renders(self, samples: list[EvalSample]) -> list[RenderResult]:
        missing = [s for s in samples if s.sample_id not in self._references]
        if missing:
            for sample, result in zip(missing, self.renderer().render([s.target for s in missing])):
                if not result.ok:
                    raise BenchmarkFormatError(f"{self.questions}: reference page {sample.sample_id} does not render "
                                               f"({result.status}: {result.reason})")
                self._references[sample.sample_id] = result
        return [self._references[s.sample_id] for s in samples]

    # ------------------------------------------------------------------ scoring
    def score_pages(self, predictions: dict[str, str]) -> list[ScoredPage]:
        """Render every (selected) sample's reference and generated page and score the pair."""
        paired = self.paired(predictions)
        samples = [sample for sample, _ in paired]
        candidates = [extract_html(text or "") for _, text in paired]
        references = self._reference_renders(samples)
        rendered = self.renderer().render(candidates)
        return [ScoredPage(sample.sample_id, reference, candidate, html, score_rendered(reference, candidate))
                for sample, reference, candidate, html in zip(samples, references, rendered, candidates)]

    def score_samples(self, predictions: dict[str, str], scoring: str = "llava") -> TaskScore:
        """Mean WCGB metrics over pages (`summarize`) and the scored pages; the convention does not change WCGB."""
        pages = self.score_pages(predictions)
        return TaskScore(summarize_pages(pages), pages)

    def score(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        return self.score_samples(predictions, scoring).metrics


def summarize_pages(pages: list[ScoredPage]) -> dict[str, float]:
    summary = summarize([page.scores for page in pages])
    return {key: float(value) for key, value in summary.items()}


class WubTask(Task):
    """WUB over a `wub.jsonl` file: `{"question_id", "image", "Q", "A"}` per Yes/No question.

    Metrics: `accuracy` (percent, Web2Code's rule), `correct`, `total`, `yes_no_ratio` (share of
    replies that are a bare yes or no), `yes_ratio` (share of replies read as yes) and the accuracy
    per question kind (`accuracy_<kind>`) when the file names kinds."""

    name = "wub"

    def __init__(self, questions: Path, image_folder: Path, *, max_new_tokens: int | None = None) -> None:
        self.questions = Path(questions)
        self.image_folder = Path(image_folder)
        self.max_new_tokens = int(max_new_tokens or WUB_MAX_NEW_TOKENS)

    def load_samples(self) -> list[EvalSample]:
        samples = []
        for number, item in read_json_lines(self.questions, "WUB questions"):
            where = f"{self.questions}:{number}"
            require_keys(item, ("question_id", "image", "Q", "A"), where)
            if not is_yes_or_no(str(item["A"])):
                raise BenchmarkFormatError(f"{where}: WUB answers must be Yes or No, got {item['A']!r}")
            image = self.image_folder / item["image"]
            if not image.is_file():
                raise BenchmarkFormatError(f"{where}: screenshot {image} not found")
            samples.append(EvalSample(str(item["question_id"]), image, str(item["Q"]), str(item["A"]),
                                      {"kind": str(item.get("kind", ""))}))
        return samples

    def score(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        """Web2Code's rule under either convention (lmms-eval has no WUB task)."""
        paired = self.paired(predictions)
        results = [(sample, text or "", wub_correct(text or "", sample.target)) for sample, text in paired]
        correct = sum(ok for _, _, ok in results)
        metrics = {
            "accuracy": 100.0 * safe_ratio(correct, len(results)),
            "correct": float(correct),
            "total": float(len(results)),
            "yes_no_ratio": safe_ratio(sum(is_yes_or_no(text) for _, text, _ in results), len(results)),
            "yes_ratio": safe_ratio(sum(wub_correct(text, "Yes") for _, text, _ in results), len(results)),
        }
        kinds = sorted({sample.meta.get("kind", "") for sample, _, _ in results} - {""})
        for kind in kinds:
            chosen = [ok for sample, _, ok in results if sample.meta.get("kind") == kind]
            metrics[f"accuracy_{kind}"] = 100.0 * safe_ratio(sum(chosen), len(chosen))
        return metrics


def wub_majority_answer(train_records: list[dict]) -> str:
    """The more frequent Yes/No answer among training conversations (the constant WUB baseline)."""
    counts = {"Yes": 0, "No": 0}
    for record in train_records:
        for turn in record.get("conversations", []):
            if turn.get("from") == "gpt" and turn.get("value") in counts:
                counts[turn["value"]] += 1
    return "Yes" if counts["Yes"] >= counts["No"] else "No"


def _find_file(root: Path, name: str, family: str) -> Path:
    """`name` in root/<family>/, root/eval/ (a web world) or root itself."""
    for folder in (root / family, root / "eval", root):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{root}: no {name} here, in {root / family} or in {root / 'eval'} "
                            f"(`crystalvlm web2code synth` writes a web world with eval/{name})")


def _image_folder(options: dict, questions: Path) -> Path:
    if "image_folder" in options:
        chosen = Path(options.pop("image_folder"))
        if not chosen.is_dir():
            raise FileNotFoundError(f"image_folder {chosen} does not exist")
        return chosen
    for candidate in (questions.parent / "images", questions.parent.parent / "images"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no images/ folder beside {questions} or one level up; pass image_folder=...")


def build_web_task(name: str, root: Path, options: dict) -> Task:
    """The registry's builder for "wcgb" and "wub". Options: image_folder, max_new_tokens (both);
    viewport (w, h) and renderer (e.g. a running RenderPool) for wcgb."""
    options = dict(options)
    root = Path(root)
    if name == "wcgb":
        questions = _find_file(root, WCGB_FILE, "wcgb")
        task: Task = WcgbTask(questions, _image_folder(options, questions), renderer=options.pop("renderer", None),
                              viewport=options.pop("viewport", None), max_new_tokens=options.pop("max_new_tokens", None))
    elif name == "wub":
        questions = _find_file(root, WUB_FILE, "wub")
        task = WubTask(questions, _image_folder(options, questions), max_new_tokens=options.pop("max_new_tokens", None))
    else:
        raise KeyError(f"unknown Web2Code task {name!r}; known: wcgb, wub")
    if options:
        raise TypeError(f"build_task({name!r}): unknown option(s) {sorted(options)}")
    return task
