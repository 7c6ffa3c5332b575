"""`write_shapes_world`: the one entry point that writes the whole shapes world.

Layout under `out_dir` (image paths in the training files are relative to `out_dir/images`):

    images/train/train_000000.png ...        training images
    images/eval/eval_000000.png ...          held-out images of POPE and CHAIR
    align.json                               stage 1 captions (LLaVA format, like LCS-558K)
    finetune.json                            stage 2 instruction mix (like LLaVA-1.5's 665K mix)
    text_corpus.txt                          every training conversation after its image's caption, then one
                                             existence survey per training image; one per line
    clip_pairs.jsonl                         {"image", "caption"} per training image
    annotations/{train,eval,mme,scienceqa,textvqa}.json   ground truth of every image
    benchmarks/pope/coco_pope_{random,popular,adversarial}.json
    benchmarks/mme/<subtask>/<name>.png + <name>.txt
    benchmarks/scienceqa/{problems.json,pid_splits.json,images/test/<pid>/image.png}
    benchmarks/textvqa/{TextVQA_0.5.1_val.json,TextVQA_Rosetta_OCR_v0.2_val.json,train_images/<id>.jpg}
    benchmarks/chair/{annotations.json,synonyms.txt,prompts.json}
    manifest.json                            counts, settings, sha256 of every file

The same arguments give byte-identical files: every image and record draws from its own seeded
random stream, and JSON is written with fixed key order.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from crystalvlm.worlds.shapes.scenes import (
    COLORS, SHAPES, Scene, SceneConfig, ShapeStatistics, check_image_size, sample_scene,
)
from crystalvlm.worlds.shapes.benchmarks import (
    MME_SUBTASKS, EvalSceneSource, draw_pope_scenes, mme_images_per_subtask, save_image, write_chair, write_json,
    write_json_lines, write_mme, write_pope, write_scienceqa, write_textvqa,
)
from crystalvlm.worlds.shapes.captions import shape_caption
from crystalvlm.worlds.shapes.corpus import existence_survey_line, grounded_corpus_line
from crystalvlm.worlds.shapes.mixture import FinetuneMix, align_record, build_finetune_records
from crystalvlm.worlds.shapes.multi_image import BENCHMARK_FILE as MULTI_IMAGE_BENCHMARK, star_count, write_multi_image_benchmark

WORLD_NAME = "shapes"
FORMAT_VERSION = 1
# Everything write_shapes_world creates; re-running into the same folder replaces exactly these.
OWNED_PATHS: tuple[str, ...] = (
    "images", "annotations", "benchmarks", "align.json", "finetune.json", "text_corpus.txt", "clip_pairs.jsonl",
    "manifest.json",
)
TRAIN_FOLDER = "train"
EVAL_FOLDER = "eval"


def _prepare_out_dir(out_dir: Path) -> None:
    """Create `out_dir`, or clear a previous shapes world in it; refuse to write into anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"shapes world output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not any(out_dir.iterdir()):
        return
    manifest = out_dir / "manifest.json"
    try:
        previous = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        previous = None
    if not isinstance(previous, dict) or previous.get("world") != WORLD_NAME:
        raise FileExistsError(f"{out_dir} is not empty and holds no shapes world (no {manifest.name} of one); "
                              "choose an empty or new folder")
    for name in OWNED_PATHS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hash_files(out_dir: Path) -> dict[str, str]:
    """sha256 of every data file, and one digest per image folder (over its files' names and
    digests) so the manifest stays small; the manifest itself is left out."""
    digests: dict[str, str] = {}
    image_digests: dict[str, list[str]] = {}
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(out_dir).as_posix()
        if relative == "manifest.json":
            continue
        digest = _sha256(path)
        if path.suffix in (".png", ".jpg"):
            folder = path.parent.relative_to(out_dir).as_posix()
            if folder.startswith("benchmarks/scienceqa/images/"):
                folder = "benchmarks/scienceqa/images"  # one folder per problem: digest them together
            image_digests.setdefault(folder, []).append(f"{path.relative_to(out_dir / folder).as_posix()} {digest}")
        else:
            digests[relative] = digest
    for folder, lines in image_digests.items():
        digests[f"{folder}/*"] = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return dict(sorted(digests.items()))


def write_shapes_world(
    out_dir: Path,
    n_train: int,
    n_eval: int,
    seed: int = 0,
    image_size: int = 64,
    progress: bool = True,
    mix: FinetuneMix | None = None,
    scene_config: SceneConfig | None = None,
    eval_scene_config: SceneConfig | None = None,
    mme_images: int | None = None,
) -> dict:
    """Write the shapes world (training data, annotations, benchmarks, manifest) and return the manifest.

    n_train: training images (one align record and ~`mix.records_per_image` finetune records each).
    n_eval: held-out size: POPE/CHAIR images (6 POPE questions each per split), ScienceQA problems,
        TextVQA questions; MME gets ceil(n_eval / 5) images (2 questions each) per subtask.
    mix: finetune task shares (FinetuneMix()); scene_config: how scenes are drawn (SceneConfig()).
    eval_scene_config: how held-out scenes are drawn (default: as training scenes); a world whose
        training scenes carry biases draws its benchmarks without them, so a learnt bias shows.
    mme_images: MME images per subtask instead of ceil(n_eval / 5) (a study that compares MME totals
        within a few percent needs more than POPE's size gives); the other benchmarks are unchanged.
    A folder holding a previous shapes world is overwritten; any other non-empty folder is refused.
    """
    out_dir = Path(out_dir)
    for name, value, lowest in (("n_train", n_train, 1), ("n_eval", n_eval, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise ValueError(f"write_shapes_world: {name} must be an integer >= {lowest}, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"write_shapes_world: seed must be an integer, got {seed!r}")
    check_image_size(image_size)
    mix = mix or FinetuneMix()
    scene_config = scene_config or SceneConfig()
    _prepare_out_dir(out_dir)
    images_dir = out_dir / "images"

    # ---- training scenes and images
    train_scenes: list[Scene] = []
    train_images: list[str] = []
    for index in tqdm(range(n_train), desc="shapes: training images", disable=not progress):
        scene = sample_scene(random.Random(f"shapes-train:{seed}:{index}"), image_size, scene_config)
        relative = f"{TRAIN_FOLDER}/train_{index:06d}.png"
        save_image(scene, images_dir / relative)
        train_scenes.append(scene)
        train_images.append(relative)
    stats = ShapeStatistics.from_scenes(train_scenes)
    text_share = sum(scene.text is not None for scene in train_scenes) / n_train

    # ---- training records
    align = [align_record(index, image, scene, random.Random(f"shapes-align:{seed}:{index}"))
             for index, (image, scene) in enumerate(zip(train_images, train_scenes))]
    finetune = build_finetune_records(train_scenes, train_images, stats, mix, seed, text_share)
    write_json(out_dir / "align.json", align, sort_keys=False)
    write_json(out_dir / "finetune.json", finetune.records, sort_keys=False)
    scene_of = dict(zip(train_images, train_scenes))
    corpus = [grounded_corpus_line(record, scene_of.get(record["image"]) if isinstance(record.get("image"), str) else None)
              for record in align + finetune.records]  # a two-image record (multi_image) has no one scene
    corpus += [existence_survey_line(scene, random.Random(f"shapes-survey:{seed}:{index}"))
               for index, scene in enumerate(train_scenes)]
    (out_dir / "text_corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    clip_pairs = [{"image": image, "caption": shape_caption(scene)} for image, scene in zip(train_images, train_scenes)]
    write_json_lines(out_dir / "clip_pairs.jsonl", clip_pairs)
    write_json(out_dir / "annotations" / "train.json",
               {"image_root": "images", "images": [s.to_annotation(f) for s, f in zip(train_scenes, train_images)]})

    # ---- held-out benchmarks (no scene renders like a training image)
    eval_scene_config = eval_scene_config or scene_config
    source = EvalSceneSource(seed, image_size, eval_scene_config, {scene.signature() for scene in train_scenes})
    if mme_images is not None and (not isinstance(mme_images, int) or isinstance(mme_images, bool) or mme_images < 2):
        raise ValueError(f"write_shapes_world: mme_images must be an integer >= 2, got {mme_images!r}")
    n_mme = mme_images_per_subtask(n_eval) if mme_images is None else mme_images
    total_eval = n_eval + n_mme * len(MME_SUBTASKS) + 2 * n_eval
    with tqdm(total=total_eval, desc="shapes: benchmarks", disable=not progress) as bar:
        tick = lambda: bar.update(1)  # noqa: E731 - a one-line progress callback
        eval_scenes = draw_pope_scenes(source, n_eval)
        eval_names = [f"eval_{index:06d}.png" for index in range(n_eval)]
        for scene, name in zip(eval_scenes, eval_names):
            save_image(scene, images_dir / EVAL_FOLDER / name)
            tick()
        eval_folder = f"images/{EVAL_FOLDER}"
        pope = write_pope(out_dir, eval_scenes, eval_names, seed, eval_folder)
        chair = write_chair(out_dir, eval_scenes, eval_names, eval_folder)
        mme, mme_annotations = write_mme(out_dir, source, n_mme, tick)
        scienceqa, scienceqa_annotations = write_scienceqa(out_dir, source, n_eval, tick)
        textvqa, textvqa_annotations = write_textvqa(out_dir, source, n_eval, tick)
    annotations_dir = out_dir / "annotations"
    write_json(annotations_dir / "eval.json",
               {"image_root": eval_folder, "images": [s.to_annotation(n) for s, n in zip(eval_scenes, eval_names)]})
    write_json(annotations_dir / "mme.json", {"image_root": "benchmarks/mme", "images": mme_annotations})
    write_json(annotations_dir / "scienceqa.json",
               {"image_root": "benchmarks/scienceqa/images/test", "images": scienceqa_annotations})
    write_json(annotations_dir / "textvqa.json",
               {"image_root": "benchmarks/textvqa/train_images", "images": textvqa_annotations})
    benchmarks = {"pope": pope, "mme": mme, "scienceqa": scienceqa, "textvqa": textvqa, "chair": chair}
    if mix.multi_image > 0:  # two-image star questions over the POPE images (off by default)
        benchmarks["multi_image"] = write_multi_image_benchmark(
            out_dir / "benchmarks" / MULTI_IMAGE_BENCHMARK, eval_folder, eval_names,
            [star_count(scene.objects) for scene in eval_scenes], n_eval, seed)

    # ---- manifest
    shape_totals = Counter(obj.shape for scene in train_scenes for obj in scene.objects)
    manifest = {
        "world": WORLD_NAME,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_eval": n_eval,
        "vocabulary": {"shapes": list(SHAPES), "colors": list(COLORS)},
        "scene_config": scene_config.to_dict(),
        **({"eval_scene_config": eval_scene_config.to_dict()} if eval_scene_config != scene_config else {}),
        "mix": mix.to_dict(),
        "paths": {
            "image_folder": "images", "train_images": f"images/{TRAIN_FOLDER}", "eval_images": eval_folder,
            "align": "align.json", "finetune": "finetune.json", "text_corpus": "text_corpus.txt",
            "clip_pairs": "clip_pairs.jsonl", "annotations": "annotations",
        },
        "counts": {
            "images/train": n_train,
            "images/eval": n_eval,
            "align.json": len(align),
            "finetune.json": len(finetune.records),
            "text_corpus.txt": len(corpus),
            "clip_pairs.jsonl": len(clip_pairs),
            "train_objects": sum(shape_totals.values()),
            "train_scenes_with_text": sum(scene.text is not None for scene in train_scenes),
        },
        "finetune_task_counts": finetune.task_counts,
        "finetune_yes_no_counts": finetune.label_counts,
        "train_statistics": {**stats.to_dict(), "object_count_by_shape": {s: shape_totals[s] for s in SHAPES}},
        "benchmarks": benchmarks,
    }
    manifest["sha256"] = _hash_files(out_dir)
    write_json(out_dir / "manifest.json", manifest, indent=1)
    return manifest
