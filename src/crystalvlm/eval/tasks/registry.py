"""Task names -> tasks built from a benchmark folder. Names match exactly; an unknown one raises.

`build_task(name, root)` accepts either the benchmark's own folder (e.g. `benchmarks/pope`) or a
folder holding one sub-folder per benchmark (`benchmarks/`, with pope/, mme/, scienceqa/,
textvqa/, chair/ inside). A folder holding a local copy of lmms-lab's Hugging Face dataset
(parquet shards such as `data/test-00000-of-00001.parquet`) instead of the official files is
read through pyarrow; its images are written once to `image_cache` (default: `<root>/images_cache`).

Official layouts:
- pope:      coco_pope_{random,popular,adversarial}.json + images/ (or val2014/)
- mme:       <subtask>/... for the 14 subtasks (MME_Benchmark_release_version)
- scienceqa: problems.json + pid_splits.json + images/<split>/<pid>/image.png
- textvqa:   TextVQA_0.5.1_val.json + train_images/ (+ TextVQA_Rosetta_OCR_v0.2_val.json)
- chair:     annotations.json + synonyms.txt + images/ (+ optional captions.json)
- wcgb, wub: Web2Code's wcgb.jsonl / wub.jsonl + images/ beside or one level up (a web world's eval/)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from crystalvlm.eval.tasks.base import Task
from crystalvlm.eval.tasks.chair import ChairTask
from crystalvlm.eval.tasks.hf_parquet import split_files
from crystalvlm.eval.tasks.mme import MME_SUBTASKS, MMEParquetTask, MMETask
from crystalvlm.eval.tasks.pope import POPE_SPLITS, PopeParquetTask, PopeTask
from crystalvlm.eval.tasks.scienceqa import ScienceQAParquetTask, ScienceQATask
from crystalvlm.eval.tasks.textvqa import TextVQAParquetTask, TextVQATask

TEXTVQA_ANNOTATIONS = "TextVQA_0.5.1_val.json"
TEXTVQA_OCR = "TextVQA_Rosetta_OCR_v0.2_val.json"


def _benchmark_folder(root: Path, family: str, marker: Callable[[Path], bool]) -> Path:
    """root/<family> when that holds the benchmark, else root itself.

    The sub-folder is tried first: a benchmarks/ folder may hold other benchmarks' parquet shards one
    level down, which must not make it look like this benchmark.
    """
    root = Path(root)
    if (root / family).is_dir() and marker(root / family):
        return root / family
    if marker(root):
        return root
    raise FileNotFoundError(f"{root}: no {family} benchmark here or in {root / family} "
                            f"(layouts: crystalvlm.eval.tasks.registry)")


def _image_folder(options: dict, *defaults: Path) -> Path:
    """The `image_folder` option, else the first default that exists; a missing folder is an error now,
    not when the runner opens the first image."""
    if "image_folder" in options:
        chosen = Path(options.pop("image_folder"))
        if not chosen.is_dir():
            raise FileNotFoundError(f"image_folder {chosen} does not exist")
        return chosen
    for candidate in defaults:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no image folder at {' or '.join(map(str, defaults))}; pass image_folder=...")


def _image_cache(folder: Path, options: dict) -> Path:
    return Path(options.pop("image_cache", folder / "images_cache"))


def _no_more(name: str, options: dict) -> None:
    if options:
        raise TypeError(f"build_task({name!r}): unknown option(s) {sorted(options)}")


def _pope(split: str) -> Callable[[Path, dict], Task]:
    def build(root: Path, options: dict) -> Task:
        name = f"coco_pope_{split}.json"

        def shards(path: Path) -> list[Path]:
            return split_files(path, split) or split_files(path, "test")
        folder = _benchmark_folder(root, "pope", lambda path: (path / name).is_file() or bool(shards(path)))
        max_new_tokens = options.pop("max_new_tokens", None)
        if (folder / name).is_file():
            images = _image_folder(options, folder / "images", folder / "val2014")
            _no_more(f"pope_{split}", options)
            return PopeTask(folder / name, images, split, max_new_tokens)
        cache = _image_cache(folder, options)
        _no_more(f"pope_{split}", options)
        return PopeParquetTask(shards(folder), split, cache, max_new_tokens)
    return build


def _mme(root: Path, options: dict) -> Task:
    def is_mme(path: Path) -> bool:
        return any((path / subtask).is_dir() for subtask in MME_SUBTASKS) or bool(split_files(path, "test"))
    folder = _benchmark_folder(root, "mme", is_mme)
    max_new_tokens = options.pop("max_new_tokens", None)
    if split_files(folder, "test") and not (folder / "existence").is_dir():
        cache = _image_cache(folder, options)
        _no_more("mme", options)
        return MMEParquetTask(split_files(folder, "test"), cache, max_new_tokens)
    _no_more("mme", options)
    return MMETask(folder, max_new_tokens)


def _scienceqa(images_only: bool) -> Callable[[Path, dict], Task]:
    name = "scienceqa_img" if images_only else "scienceqa"

    def build(root: Path, options: dict) -> Task:
        folder = _benchmark_folder(root, "scienceqa",
                                   lambda path: (path / "problems.json").is_file() or bool(split_files(path, "test")))
        max_new_tokens = options.pop("max_new_tokens", None)
        if (folder / "problems.json").is_file():
            split = options.pop("split", "test")
            _no_more(name, options)
            return ScienceQATask(folder, split, images_only, max_new_tokens)
        if not images_only:
            raise FileNotFoundError(f"{folder}: lmms-lab/ScienceQA copies hold ScienceQA-IMG only; use 'scienceqa_img'")
        cache = _image_cache(folder, options)
        _no_more(name, options)
        shards = split_files(folder, "test")
        # A full snapshot of lmms-lab/ScienceQA holds ScienceQA-FULL/ and ScienceQA-IMG/ side by side.
        image_shards = [shard for shard in shards if "ScienceQA-IMG" in shard.parts]
        return ScienceQAParquetTask(image_shards or shards, cache, max_new_tokens)
    return build


def _textvqa(root: Path, options: dict) -> Task:
    def is_textvqa(path: Path) -> bool:
        return (path / TEXTVQA_ANNOTATIONS).is_file() or bool(split_files(path, "validation"))
    folder = _benchmark_folder(root, "textvqa", is_textvqa)
    max_new_tokens = options.pop("max_new_tokens", None)
    capitalize = options.pop("capitalize_question", False)
    # OCR tokens in the prompt by default when the OCR file is there: LLaVA-1.5's TextVQA numbers use them.
    use_ocr = options.pop("ocr", None)
    if (folder / TEXTVQA_ANNOTATIONS).is_file():
        images = _image_folder(options, folder / "train_images")
        _no_more("textvqa", options)
        ocr_file = folder / TEXTVQA_OCR
        if use_ocr and not ocr_file.is_file():
            raise FileNotFoundError(f"{ocr_file}: OCR tokens requested (ocr=True) but the file is missing")
        ocr = ocr_file if (use_ocr is None and ocr_file.is_file()) or use_ocr else None
        return TextVQATask(folder / TEXTVQA_ANNOTATIONS, images, ocr, capitalize, max_new_tokens)
    cache = _image_cache(folder, options)
    _no_more("textvqa", options)
    shards = split_files(folder, "validation")
    return TextVQAParquetTask(shards, cache, use_ocr is not False, capitalize, max_new_tokens)


def _chair(root: Path, options: dict) -> Task:
    folder = _benchmark_folder(root, "chair", lambda path: (path / "annotations.json").is_file())
    captions = folder / "captions.json"
    task = ChairTask(folder / "annotations.json", Path(options.pop("synonyms", folder / "synonyms.txt")),
                     _image_folder(options, folder / "images"), captions if captions.is_file() else None,
                     options.pop("max_new_tokens", None))
    _no_more("chair", options)
    return task


def _web2code(name: str) -> Callable[[Path, dict], Task]:
    def build(root: Path, options: dict) -> Task:
        from crystalvlm.eval.tasks.web import build_web_task  # imported on use: eval loads no renderer otherwise

        return build_web_task(name, root, options)
    return build


TASK_BUILDERS: dict[str, Callable[[Path, dict], Task]] = {
    **{f"pope_{split}": _pope(split) for split in POPE_SPLITS},
    "mme": _mme,
    "scienceqa": _scienceqa(images_only=False),
    "scienceqa_img": _scienceqa(images_only=True),
    "textvqa": _textvqa,
    "chair": _chair,
    "wcgb": _web2code("wcgb"),
    "wub": _web2code("wub"),
}


def task_names() -> list[str]:
    return sorted(TASK_BUILDERS)


def build_task(name: str, root: Path, **options) -> Task:
    """The task `name` over the benchmark folder `root`.

    Options: max_new_tokens (all); image_folder (pope, textvqa, chair); image_cache (parquet
    copies); split (scienceqa*, default "test"); ocr (textvqa: True/False, default: use the OCR
    file when present); capitalize_question (textvqa, lmms-eval's prompt); synonyms (chair).
    """
    if name not in TASK_BUILDERS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return TASK_BUILDERS[name](Path(root), dict(options))
