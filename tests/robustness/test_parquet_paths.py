"""Hostile names in benchmark data: file names from parquet rows and image paths from benchmark
files stay inside their folder, and a name that escapes is refused with the record that named it."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from crystalvlm.eval.tasks.chair import ChairTask
from crystalvlm.eval.tasks.files import BenchmarkFormatError
from crystalvlm.eval.tasks.pope import PopeTask
from crystalvlm.eval.tasks.registry import build_task
from crystalvlm.eval.tasks.scienceqa import ScienceQATask

pyarrow = pytest.importorskip("pyarrow")
parquet = pytest.importorskip("pyarrow.parquet")


def png_cell(name: str) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": name}


def write_shard(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    parquet.write_table(pyarrow.Table.from_pylist(rows), path)


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


def pope_row(image_source: str, question_id: str = "1") -> dict:
    return {"question_id": question_id, "question": "Is there a dog in the image?", "answer": "yes",
            "image_source": image_source, "image": png_cell("x.png"), "category": "random"}


@pytest.mark.parametrize("hostile", [
    "../../planted",  # climbs out of cache/pope and out of the cache
    "../../site-packages/evil.pth",  # keeps its own suffix: a .pth file would run at every start-up
    "ABSOLUTE",  # an absolute path, filled in below with a folder outside the cache
])
def test_a_pope_row_cannot_write_outside_the_image_cache(tmp_path, hostile):
    outside = tmp_path / "outside"
    outside.mkdir()
    if hostile == "ABSOLUTE":
        hostile = str(outside / "planted")
    write_shard(tmp_path / "POPE" / "data" / "test-00000-of-00001.parquet", [pope_row("COCO_1"), pope_row(hostile, "2")])
    before = files_under(tmp_path)
    task = build_task("pope_random", tmp_path / "POPE", image_cache=tmp_path / "cache")
    with pytest.raises(BenchmarkFormatError, match=r"lmms-lab/POPE row 1: .*escapes the image folder") as caught:
        task.samples()
    assert hostile in str(caught.value)
    cache = tmp_path / "cache"
    written_outside = {path for path in files_under(tmp_path) - before
                       if cache != path and cache not in path.parents}
    assert written_outside == set()


def test_mme_and_textvqa_rows_are_confined_too(tmp_path):
    outside_name = "../../../mme_escape.png"
    write_shard(tmp_path / "MME" / "data" / "test-00000-of-00001.parquet", [
        {"question_id": outside_name, "question": f"Q{number}? Please answer yes or no.", "answer": "Yes",
         "category": "code_reasoning", "image": png_cell("0020.png")} for number in (1, 2)])
    with pytest.raises(BenchmarkFormatError, match=r"lmms-lab/MME row 0: .*mme_escape"):
        build_task("mme", tmp_path / "MME", image_cache=tmp_path / "cache").samples()
    write_shard(tmp_path / "textvqa" / "data" / "validation-00000-of-00001.parquet", [
        {"question_id": 7, "image_id": "../../textvqa_escape", "question": "what is written?",
         "answers": ["stop"] * 10, "ocr_tokens": ["STOP"], "image": png_cell("abc.jpg")}])
    with pytest.raises(BenchmarkFormatError, match=r"lmms-lab/textvqa row 0: .*textvqa_escape"):
        build_task("textvqa", tmp_path / "textvqa", image_cache=tmp_path / "cache").samples()
    assert not list(tmp_path.rglob("*escape*"))


def test_a_symlink_in_the_cache_does_not_lead_the_write_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache" / "pope").mkdir(parents=True)
    os.symlink(outside, tmp_path / "cache" / "pope" / "link")
    write_shard(tmp_path / "POPE" / "data" / "test-00000-of-00001.parquet", [pope_row("link/planted")])
    with pytest.raises(BenchmarkFormatError, match=r"row 0: .*escapes the image folder"):
        build_task("pope_random", tmp_path / "POPE", image_cache=tmp_path / "cache").samples()
    assert list(outside.iterdir()) == []


def test_ordinary_names_with_subfolders_still_work(tmp_path):
    write_shard(tmp_path / "POPE" / "data" / "test-00000-of-00001.parquet",
                [pope_row("val2014/COCO_1"), pope_row("val2014/COCO_1", "2")])
    samples = build_task("pope_random", tmp_path / "POPE", image_cache=tmp_path / "cache").samples()
    assert samples[0].image == (tmp_path / "cache" / "pope" / "val2014" / "COCO_1.png").resolve()
    assert Image.open(samples[0].image).size == (4, 4)
    assert not list((tmp_path / "cache").rglob("*.partial"))


# ----------------------------------------------------------------------------- benchmark files
def test_a_pope_record_with_a_parent_path_is_refused_naming_the_line(tmp_path):
    annotations = tmp_path / "coco_pope_random.json"
    annotations.write_text("\n".join(json.dumps(row) for row in [
        {"question_id": 1, "image": "COCO_1.jpg", "text": "Is there a dog?", "label": "yes"},
        {"question_id": 2, "image": "../../etc/passwd", "text": "Is there a cat?", "label": "no"},
    ]) + "\n")
    (tmp_path / "images").mkdir()
    with pytest.raises(BenchmarkFormatError, match=r"coco_pope_random\.json:2: .*'\.\./\.\./etc/passwd'.*escapes"):
        PopeTask(annotations, tmp_path / "images").samples()


def test_a_scienceqa_problem_with_a_parent_path_is_refused_naming_the_problem(tmp_path):
    problem = {"question": "Which can fly?", "choices": ["bird", "fish"], "answer": 0, "hint": "",
               "image": "../../../../secret.png", "split": "test"}
    (tmp_path / "problems.json").write_text(json.dumps({"42": problem}))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["42"]}))
    with pytest.raises(BenchmarkFormatError, match=r"problem 42: .*escapes the image folder"):
        ScienceQATask(tmp_path).samples()


def test_a_chair_image_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "elsewhere" / "private.png")
    os.symlink(tmp_path / "elsewhere" / "private.png", tmp_path / "images" / "COCO_1.jpg")
    annotations = tmp_path / "chair.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": "COCO_1.jpg", "objects": ["dog"]}]}))
    synonyms = tmp_path / "synonyms.txt"
    synonyms.write_text("dog\n")
    with pytest.raises(BenchmarkFormatError, match=r"chair\.json: image 1: .*escapes the image folder"):
        ChairTask(annotations, synonyms, tmp_path / "images").samples()
