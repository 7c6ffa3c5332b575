"""Existing web datasets -> LLaVA-format instruction records (Web2Code's DWCGR and DWUR).

Each converter reads one source format and writes `out_dir/<name>.json`, a JSON list of LLaVA
records (`{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": ...}]}`), whose `image` paths are relative to the report's image folder.

* WebSight (`HuggingFaceM4/WebSight`: columns `image` and `text`) -> "write the HTML for this
  screenshot" records. Input: the dataset's parquet shards (a file or a folder of them; the
  embedded images are written to `out_dir/images/`; needs pyarrow), or a JSON list / JSON-lines
  file of `{"image": path relative to the file's folder (or image_folder), "text" or "html": HTML}`.
* pix2code (`.gui` DSL files) -> the DSL compiled to self-contained HTML (`compile_pix2code`), then
  records pairing a screenshot with that HTML. The DSL carries no text, so the compiler writes
  seeded placeholder words; re-rendering the compiled HTML (pass a `RenderPool`) gives screenshots
  that match the code exactly, while reusing pix2code's own `.png` files keeps their different text.
* WebSRC question-answer data (`{domain}/{website}/dataset.csv` with screenshots in
  `processed_data/{page}.png`, the page being `id[2:9]`) -> multi-turn question-answer records
  (DWUR; Web2Code also had GPT-4 rewrite them, which is left to `llm_pages` if wanted).

Bad input is reported, never silently dropped: every converter returns a `ConversionReport` listing
each skipped input with its file, record (index, line or name) and reason; with `strict=True` the
first problem raises `ConversionError` with that same message instead.
"""

from __future__ import annotations

import csv
import json
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from crystalvlm.data.templates import IMAGE_PLACEHOLDER
from crystalvlm.web2code.render import RenderPool

HTML_PROMPTS = (
    "Please generate html code for the given image",  # Web2Code's evaluation prompt
    "Write the HTML code that reproduces this webpage.",
    "Convert this webpage screenshot into HTML and CSS.",
    "Generate the HTML source for the page shown in the image.",
)
SHORT_ANSWER = "Answer the question using a single word or phrase."
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ConversionError(ValueError):
    """A source file or record cannot be converted; the message names the file and the record."""


@dataclass
class ConversionReport:
    output: Path
    image_folder: Path
    written: int = 0
    skipped: list[str] = field(default_factory=list)
    strict: bool = False

    def problem(self, message: str) -> None:
        """Record a skipped input, or refuse it at once in strict mode."""
        if self.strict:
            raise ConversionError(message)
        self.skipped.append(message)

    def as_dict(self) -> dict:
        return {"output": str(self.output), "image_folder": str(self.image_folder), "written": self.written,
                "skipped": len(self.skipped), "problems": self.skipped[:50]}


def html_record(record_id: str, image: str, html: str, prompt: str) -> dict:
    return {"id": record_id, "image": image,
            "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{prompt}"}, {"from": "gpt", "value": html}]}


def _read_items(path: Path) -> list[tuple[str, object]]:
    """(where, item) pairs from a JSON list or JSON-lines file; an unparsable line comes back as
    (where, ValueError) so that the rest of the file is still read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConversionError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConversionError(f"{path}: not valid JSON ({error}); a JSON list cannot be read record by record") from None
        return [(f"{path} record {index}", item) for index, item in enumerate(items)]
    items: list[tuple[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                items.append((f"{path}:{number}", ValueError(f"invalid JSON ({error.msg})")))
    return items


def _write_records(records: list[dict], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    partial.replace(output)  # a killed conversion never leaves half a file under the real name


def _prompt(rng: random.Random, vary_prompt: bool) -> str:
    return rng.choice(HTML_PROMPTS) if vary_prompt else HTML_PROMPTS[0]


# ----------------------------------------------------------------------------- WebSight
WEBSIGHT_SUFFIXES = (".json", ".jsonl", ".parquet")


def _websight_parquet_rows(files: list[Path]):
    """(where, row) for every row of the shards; pyarrow is needed only here."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ConversionError("reading WebSight parquet shards needs pyarrow, which is not installed: "
                              "pip install pyarrow (or give a JSON / JSON-lines file with image paths)") from None
    for file in files:
        try:
            table = parquet.read_table(file)
        except Exception as error:  # pyarrow raises several kinds for a damaged file
            raise ConversionError(f"{file}: not a readable parquet file ({error})") from None
        missing = [column for column in ("image", "text") if column not in table.column_names]
        if missing:
            raise ConversionError(f"{file}: a WebSight shard needs the columns image and text; "
                                  f"it lacks {', '.join(missing)} (has {', '.join(table.column_names)})")
        for index, row in enumerate(table.to_pylist()):
            yield f"{file} row {index}", row


def convert_websight(source: str | Path, out_dir: str | Path, *, image_folder: str | Path | None = None,
                     seed: int = 0, vary_prompt: bool = True, strict: bool = False,
                     progress: bool = False) -> ConversionReport:
    """WebSight records into `out_dir/websight.json` (see the module docstring for the inputs)."""
    source, out_dir = Path(source), Path(out_dir)
    if source.is_dir():
        files = sorted(path for path in source.rglob("*.parquet"))
        if not files:
            raise ConversionError(f"{source}: no WebSight parquet shards (*.parquet) in this folder")
    elif source.is_file():
        if source.suffix.lower() not in WEBSIGHT_SUFFIXES:
            raise ConversionError(f"{source}: a WebSight source must be {', '.join(WEBSIGHT_SUFFIXES)} "
                                  "or a folder of parquet shards")
        files = [source]
    else:
        raise FileNotFoundError(f"WebSight source {source} does not exist")
    embedded = files[0].suffix.lower() == ".parquet"
    folder = out_dir / "images" if embedded else Path(image_folder) if image_folder else source.parent
    report = ConversionReport(out_dir / "websight.json", folder, strict=strict)
    rng = random.Random(seed)
    rows = _websight_parquet_rows(files) if embedded else _read_items(source)
    records = []
    for index, (where, item) in enumerate(_progress(rows, progress, "websight")):
        if isinstance(item, Exception):
            report.problem(f"{where}: {item}")
            continue
        if not isinstance(item, dict):
            report.problem(f"{where}: a record must be a JSON object, got {type(item).__name__}")
            continue
        html = item.get("text", item.get("html"))
        if not isinstance(html, str) or "<" not in html:
            report.problem(f"{where}: no HTML in 'text' (or 'html')")
            continue
        record_id = str(item.get("id", f"websight_{index:07d}"))
        image = _websight_image(item.get("image"), folder, record_id, where, report)
        if image is None:
            continue
        records.append(html_record(record_id, image, html.strip(), _prompt(rng, vary_prompt)))
    _write_records(records, report.output)
    report.written = len(records)
    return report


def _websight_image(cell: object, folder: Path, record_id: str, where: str, report: ConversionReport) -> str | None:
    """The record's image path relative to `folder`, writing an embedded image there first."""
    if isinstance(cell, dict) and isinstance(cell.get("bytes"), (bytes, bytearray)):
        data = bytes(cell["bytes"])
        suffix = Path(str(cell.get("path") or "")).suffix or (".png" if data.startswith(_PNG_MAGIC) else ".jpg")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", record_id) + suffix
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        return name
    path = cell.get("path") if isinstance(cell, dict) else cell
    if not isinstance(path, str) or not path:
        report.problem(f"{where}: 'image' must be a path relative to {folder} (or an embedded image), got {cell!r:.80}")
        return None
    if not (folder / path).is_file():
        report.problem(f"{where}: image {path} not found in {folder}")
        return None
    return path


def _progress(items, enabled: bool, label: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=label, unit=" records")


# ----------------------------------------------------------------------------- pix2code
PIX2CODE_CONTAINERS = ("body", "header", "row", "single", "double", "quadruple")
PIX2CODE_LEAVES = ("btn-active", "btn-inactive", "btn-green", "btn-orange", "btn-red", "big-title", "small-title", "text")
_PIX2CODE_WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
                   "labore et dolore magna aliqua enim minim veniam quis nostrud exercitation ullamco laboris "
                   "nisi aliquip commodo consequat duis aute irure").split()
PIX2CODE_CSS = (
    "body{margin:0;font-family:'Helvetica Neue',Helvetica,Arial,sans-serif;font-size:14px;line-height:1.43;"
    "color:#333;background:#fff}"
    ".container{max-width:1140px;margin:0 auto;padding:0 15px}"
    ".header{margin:20px 0;overflow:hidden}"
    ".nav{list-style:none;margin:0;padding:0}"
    ".nav li{float:left;margin-right:10px;background:#333;border-radius:4px}"
    ".nav li.active{background:#337ab7}"
    ".nav li a{display:block;padding:10px 15px;color:#fff;text-decoration:none}"
    ".row{display:flex;gap:2%;margin-bottom:20px}"
    ".col-12,.col-6,.col-3{box-sizing:border-box;background:#f5f5f5;border-radius:6px;padding:20px}"
    ".col-12{width:100%}.col-6{width:49%}.col-3{width:23.5%}"
    "h2{font-size:30px;margin:20px 0 10px}h4{font-size:18px;margin:10px 0}"
    ".btn{display:inline-block;padding:6px 12px;border-radius:4px;color:#fff;text-decoration:none}"
    ".btn-success{background:#5cb85c}.btn-warning{background:#f0ad4e}.btn-danger{background:#d9534f}"
    "footer{padding:20px 0;text-align:center;border-top:1px solid #bbb}"
)


@dataclass(frozen=True)
class GuiNode:
    token: str
    children: tuple["GuiNode", ...] = ()


def parse_gui(text: str, source: str = "<gui>") -> list[GuiNode]:
    """pix2code's DSL: `token`, `token { children }`, separated by commas and/or new lines.
    Errors name `source` and the line."""
    tokens = [(match.group(), text.count("\n", 0, match.start()) + 1)
              for match in re.finditer(r"\{|\}|,|[^\s{},]+", text)]
    if not tokens:
        raise ValueError(f"{source}: empty pix2code program")
    position = 0

    def items(opened_on: int | None) -> list[GuiNode]:
        nonlocal position
        found: list[GuiNode] = []
        while position < len(tokens):
            token, line = tokens[position]
            if token == ",":
                position += 1
                continue
            if token == "}":
                if opened_on is None:
                    raise ValueError(f"{source}:{line}: '}}' without a matching '{{'")
                position += 1
                return found
            if token == "{":
                raise ValueError(f"{source}:{line}: '{{' must follow a container name")
            if token not in PIX2CODE_CONTAINERS and token not in PIX2CODE_LEAVES:
                raise ValueError(f"{source}:{line}: unknown pix2code token {token!r} "
                                 f"(known: {', '.join(PIX2CODE_CONTAINERS + PIX2CODE_LEAVES)})")
            position += 1
            if position < len(tokens) and tokens[position][0] == "{":
                if token not in PIX2CODE_CONTAINERS:
                    raise ValueError(f"{source}:{line}: {token!r} cannot have children")
                position += 1
                found.append(GuiNode(token, tuple(items(line))))
            else:
                found.append(GuiNode(token))
        if opened_on is not None:
            raise ValueError(f"{source}:{opened_on}: this '{{' is never closed")
        return found

    return items(None)


def compile_pix2code(gui_text: str, seed: int = 0, source: str = "<gui>") -> str:
    """Self-contained HTML for a pix2code web `.gui` program (placeholder text from `seed`)."""
    rng = random.Random(seed)

    def words(low: int, high: int, capital: bool = True) -> str:
        text = " ".join(rng.choice(_PIX2CODE_WORDS) for _ in range(rng.randint(low, high)))
        return text[:1].upper() + text[1:] if capital else text

    def emit(node: GuiNode) -> str:
        inner = "".join(emit(child) for child in node.children)
        token = node.token
        if token == "body":
            return inner
        if token == "header":
            return f'<div class="header"><nav><ul class="nav">{inner}</ul></nav></div>'
        if token == "row":
            return f'<div class="row">{inner}</div>'
        if token in ("single", "double", "quadruple"):
            width = {"single": 12, "double": 6, "quadruple": 3}[token]
            return f'<div class="col-{width}">{inner}</div>'
        if token == "btn-active":
            return f'<li class="active"><a href="#">{words(1, 1)}</a></li>'
        if token == "btn-inactive":
            return f'<li><a href="#">{words(1, 1)}</a></li>'
        if token in ("btn-green", "btn-orange", "btn-red"):
            kind = {"btn-green": "success", "btn-orange": "warning", "btn-red": "danger"}[token]
            return f'<a class="btn btn-{kind}" href="#">{words(1, 2)}</a>'
        if token == "big-title":
            return f"<h2>{words(2, 4)}</h2>"
        if token == "small-title":
            return f"<h4>{words(1, 3)}</h4>"
        return f"<p>{words(12, 24)}.</p>"  # text

    body = "".join(emit(node) for node in parse_gui(gui_text, source))
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>Scaffold</title>\n"
            f"<style>{PIX2CODE_CSS}</style>\n</head>\n<body>\n<main class=\"container\">{body}"
            "<footer class=\"footer\"></footer></main>\n</body>\n</html>\n")


def convert_pix2code(gui_folder: str | Path, out_dir: str | Path, *, pool: RenderPool | None = None,
                     seed: int = 0, vary_prompt: bool = True, strict: bool = False,
                     progress: bool = False) -> ConversionReport:
    """Records from every `*.gui` in `gui_folder` into `out_dir/pix2code.json` (+ `out_dir/html/`).

    With `pool`, each compiled page is rendered to `out_dir/images/<name>.png` (the image folder);
    without, the `<name>.png` beside each `.gui` is used and `gui_folder` is the image folder."""
    gui_folder, out_dir = Path(gui_folder), Path(out_dir)
    if not gui_folder.is_dir():
        raise FileNotFoundError(f"pix2code folder {gui_folder} does not exist")
    image_folder = out_dir / "images" if pool is not None else gui_folder
    report = ConversionReport(out_dir / "pix2code.json", image_folder, strict=strict)
    rng = random.Random(seed)
    compiled: list[tuple[Path, str]] = []
    programs = sorted(gui_folder.rglob("*.gui"))
    if not programs:
        raise ConversionError(f"{gui_folder}: no pix2code .gui files in this folder")
    for gui in _progress(programs, progress, "pix2code"):
        try:
            text = gui.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            report.problem(f"{gui}: not UTF-8 text ({error.reason} at byte {error.start})")
            continue
        try:
            # A page's placeholder text depends only on its file name and the seed.
            html = compile_pix2code(text, seed=zlib.crc32(f"{seed}:{gui.stem}".encode()), source=str(gui))
        except ValueError as error:
            report.problem(str(error))  # parse_gui's message starts with the file name
            continue
        compiled.append((gui, html))
    (out_dir / "html").mkdir(parents=True, exist_ok=True)
    images: dict[Path, str] = {}
    if pool is not None:
        image_folder.mkdir(parents=True, exist_ok=True)
        for (gui, _), result in zip(compiled, pool.render([html for _, html in compiled])):
            if result.png is None:
                report.problem(f"{gui}: rendering failed ({result.status}: {result.reason})")
                continue
            (image_folder / f"{gui.stem}.png").write_bytes(result.png)
            images[gui] = f"{gui.stem}.png"
    else:
        for gui, _ in compiled:
            png = gui.with_suffix(".png")
            if png.is_file():
                images[gui] = str(png.relative_to(gui_folder))
            else:
                report.problem(f"{gui}: no screenshot {png.name} beside it (pass a RenderPool to render one)")
    records = []
    for gui, html in compiled:
        if gui not in images:
            continue
        (out_dir / "html" / f"{gui.stem}.html").write_text(html, encoding="utf-8")
        prompt = rng.choice(HTML_PROMPTS) if vary_prompt else HTML_PROMPTS[0]
        records.append(html_record(f"pix2code_{gui.stem}", images[gui], html, prompt))
    _write_records(records, report.output)
    report.written = len(records)
    return report


# ----------------------------------------------------------------------------- WebSRC
WEBSRC_COLUMNS = ("question", "id", "element_id", "answer_start", "answer")


def _websrc_answer(row: dict) -> str:
    answer = row["answer"].strip()
    if str(row["element_id"]).strip() == "-1" and answer.lower() in ("yes", "no"):
        return answer.capitalize()  # yes/no questions have no answer tag
    return answer


def convert_websrc(root: str | Path, out_dir: str | Path, *, turns_per_record: int = 4, strict: bool = False,
                   progress: bool = False) -> ConversionReport:
    """Records from every `dataset.csv` under `root` into `out_dir/websrc.json`; screenshots stay
    where they are, so the image folder is `root`."""
    root, out_dir = Path(root), Path(out_dir)
    if turns_per_record < 1:
        raise ValueError(f"turns_per_record must be >= 1, got {turns_per_record}")
    if not root.is_dir():
        raise FileNotFoundError(f"WebSRC folder {root} does not exist")
    report = ConversionReport(out_dir / "websrc.json", root, strict=strict)
    pages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    tables = sorted(root.rglob("dataset.csv"))
    if not tables:
        raise ConversionError(f"{root}: no WebSRC dataset.csv below this folder "
                              "(expected {domain}/{website}/dataset.csv)")
    for table in _progress(tables, progress, "websrc"):
        try:
            with open(table, newline="", encoding="utf-8") as handle:
                _read_websrc_table(csv.DictReader(handle), table, root, pages, report)
        except UnicodeDecodeError as error:
            report.problem(f"{table}: not UTF-8 text ({error.reason} at byte {error.start})")
        except csv.Error as error:
            report.problem(f"{table}: not readable as CSV ({error})")
    records = []
    for key, (image, qa) in pages.items():
        for start in range(0, len(qa), turns_per_record):
            conversations = []
            for offset, (question, answer) in enumerate(qa[start:start + turns_per_record]):
                prefix = IMAGE_PLACEHOLDER + "\n" if offset == 0 else ""
                conversations.append({"from": "human", "value": f"{prefix}{question}\n{SHORT_ANSWER}"})
                conversations.append({"from": "gpt", "value": answer})
            records.append({"id": f"websrc_{key}_{start // turns_per_record}", "image": image,
                            "conversations": conversations})
    _write_records(records, report.output)
    report.written = len(records)
    return report


def _read_websrc_table(reader: csv.DictReader, table: Path, root: Path,
                       pages: dict[str, tuple[str, list[tuple[str, str]]]], report: ConversionReport) -> None:
    missing = [column for column in WEBSRC_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        report.problem(f"{table}: lacks column(s) {', '.join(missing)} (a WebSRC dataset.csv has "
                       f"{', '.join(WEBSRC_COLUMNS)})")
        return
    for row in reader:
        where = f"{table}:{reader.line_num}"
        if None in row:  # more cells than columns
            report.problem(f"{where}: {len(row[None])} cell(s) more than the header has columns")
            continue
        qa_id = (row["id"] or "").strip()
        question, answer = (row["question"] or "").strip(), (row["answer"] or "").strip()
        if len(qa_id) != 14:
            report.problem(f"{where}: id {qa_id!r} must have 14 characters (domain, website, page, question)")
            continue
        if not question or not answer:
            report.problem(f"{where}: id {qa_id}: empty {'question' if not question else 'answer'}")
            continue
        page = qa_id[2:9]  # website (2) + page (5), e.g. "sp160000100001" -> "1600001"
        image = table.parent / "processed_data" / f"{page}.png"
        if not image.is_file():
            report.problem(f"{where}: id {qa_id}: screenshot {image.relative_to(root)} not found")
            continue
        key = qa_id[:9]  # the domain prefix keeps pages of different domains apart
        entry = pages.setdefault(key, (str(image.relative_to(root)), []))
        entry[1].append((question, _websrc_answer(row)))
