"""Writing the high-resolution shapes world: training conversations and two benchmarks in TextVQA's
file layout (so `crystalvlm eval`'s textvqa task reads them): `detail` asks the tile's pattern
(needs full resolution), `coarse` asks its colour (visible at any scale). Images are lossless PNG
for training and JPEG at quality 100 without chroma subsampling for the benchmarks (TextVQA's
layout names `<image_id>.jpg`; the 1-pixel stripes survive it)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from crystalvlm.worlds.shapes_hires.scenes import COLOURS, PATTERNS, render_scene, sample_scene

SHORT_ANSWER = "Answer the question using a single word or phrase."
VIEW = 32  # the tiny tower's side
DETAIL_QUESTION = "what pattern is on the small tile?"
COARSE_QUESTION = "what colour is the small tile?"


def _turns(scene, rng: random.Random) -> list[dict]:
    pairs = [(DETAIL_QUESTION, scene.pattern), (COARSE_QUESTION, scene.colour)]
    rng.shuffle(pairs)
    turns = []
    for index, (question, answer) in enumerate(pairs):
        prefix = "<image>\n" if index == 0 else ""
        turns += [{"from": "human", "value": f"{prefix}{question}\n{SHORT_ANSWER}"}, {"from": "gpt", "value": answer}]
    return turns


def _save_jpeg(image, path: Path) -> None:
    image.save(path, format="JPEG", quality=100, subsampling=0)


def write_hires_world(out: Path, n_train: int, n_eval: int, seed: int, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"shapes-hires:{seed}")
    records, corpus, clip_pairs = [], [], []
    (out / "clip_views").mkdir(exist_ok=True)
    for index in tqdm(range(n_train), desc="hires world: train", disable=not progress):
        scene = sample_scene(rng)
        name = f"train_{index:06d}.png"
        image = render_scene(scene)
        image.save(images / name)
        # The tiny CLIP's pairs: the 32 x 32 part of the canvas around the tile at full resolution (what
        # an anyres sub-image shows) and the whole canvas (what one downscaled view shows), same caption.
        caption = f"a {scene.colour} tile with a {scene.pattern} pattern"
        left, top = (scene.tile_x // VIEW) * VIEW, (scene.tile_y // VIEW) * VIEW
        crop = f"clip_views/crop_{index:06d}.png"
        image.crop((left, top, left + VIEW, top + VIEW)).save(out / crop)
        clip_pairs += [{"image": crop, "caption": caption}, {"image": f"images/{name}", "caption": caption}]
        turns = _turns(scene, rng)
        records.append({"id": f"hires-{index}", "image": name, "conversations": turns})
        corpus += [turn["value"].replace("<image>\n", "") for turn in turns]
    (out / "finetune.json").write_text(json.dumps(records))
    (out / "clip_pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in clip_pairs))
    eval_rng = random.Random(f"shapes-hires-eval:{seed}")
    header = {"dataset_name": "textvqa", "dataset_version": "0.5.1", "dataset_type": "val"}
    benchmarks = {"detail": [], "coarse": []}
    for kind in benchmarks:
        (out / "benchmarks" / kind / "train_images").mkdir(parents=True, exist_ok=True)
    shapes = {}
    for index in tqdm(range(n_eval), desc="hires world: eval", disable=not progress):
        scene = sample_scene(eval_rng)
        image_id = f"hires{index:05d}"
        image = render_scene(scene)
        shapes[image_id] = [scene.width, scene.height]
        for kind, question, answer in (("detail", DETAIL_QUESTION, scene.pattern), ("coarse", COARSE_QUESTION, scene.colour)):
            _save_jpeg(image, out / "benchmarks" / kind / "train_images" / f"{image_id}.jpg")
            benchmarks[kind].append({
                "question": question, "image_id": image_id, "image_classes": [], "flickr_original_url": "",
                "flickr_300k_url": "", "image_width": scene.width, "image_height": scene.height,
                "answers": [answer] * 10, "question_tokens": question.rstrip("?").split(),
                "question_id": index + 1, "set_name": "val"})
    for kind, data in benchmarks.items():
        (out / "benchmarks" / kind / "TextVQA_0.5.1_val.json").write_text(json.dumps({**header, "data": data}))
    corpus += [f"the tile is {colour} with a {pattern} pattern" for colour in COLOURS for pattern in PATTERNS] * 20
    (out / "text_corpus.txt").write_text("\n".join(corpus) + "\n")
    return {"train_records": len(records), "eval_images": n_eval, "eval_sizes": shapes}
