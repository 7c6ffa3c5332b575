"""The shapes world behind the data engine (`crystalvlm engine run` with no --model): its
capabilities, a probe that judges a checkpoint per capability, the generator that makes correct
records of any capability, unlabelled images for VIGC, and the engine's starting model.

Capabilities are the world's question types (questions.QA_GENERATORS): existence, counting, color,
position, ocr, multiple_choice. The probe asks `per_capability` held-out questions of each type in
the short-answer format and scores an answer right when it equals the truth (case, surrounding space
and a final period ignored). Probe scenes, generated scenes and unlabelled scenes come from separate
seeded streams, and generated scenes never repeat a probe scene's pixels.

The starting model is deliberately under-trained: recipe `tiny`'s align stage, then its finetune
stage cut to `START_FINETUNE_STEPS` optimizer steps (of ~500). Its mix is half existence questions,
so existence is learned first and the other types lag by different amounts: weaknesses that differ
by capability, and room to improve, in minutes on a CPU (docs/data-engine.md has the figures).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

from crystalvlm.worlds.shapes.mixture import _image_record, image_task_turns
from crystalvlm.worlds.shapes.questions import (
    QA, QA_GENERATORS, SHORT_ANSWER_PROMPT, Context, LabelBalancer,
)
from crystalvlm.worlds.shapes.scenes import (
    AUTO, TEXT_KINDS, Scene, SceneConfig, ShapeStatistics, render_scene, sample_scene,
)

CAPABILITIES: tuple[str, ...] = tuple(QA_GENERATORS)
IMAGE_SIZE = 48  # recipe tiny's prepare.image_size
START_FINETUNE_STEPS = 60
ENGINE_EPOCHS = 2.0  # epochs over each round's new records
# Below the recipe's peak (1e-3): the starting model's schedule has decayed to zero, and a round that
# warmed back up to 1e-3 undid what it knew (existence 0.80 -> 0.55 after 1200 uniform records), while
# 3e-4 kept it and added to it (0.80 -> 0.87).
ENGINE_LR = 3.0e-4


def draw_scene(capability: str, rng: random.Random, image_size: int = IMAGE_SIZE) -> Scene:
    """A scene that can carry a question of `capability` (reading questions need text)."""
    text_kind = rng.choice(TEXT_KINDS) if capability == "ocr" else AUTO
    return sample_scene(rng, image_size, SceneConfig(), text_kind=text_kind)


_STATISTICS: dict[int, ShapeStatistics] = {}


def shape_statistics(image_size: int = IMAGE_SIZE) -> ShapeStatistics:
    """Co-occurrence statistics for hard existence negatives, from 1000 scenes of a fixed stream."""
    if image_size not in _STATISTICS:
        rng = random.Random("shapes-engine-statistics")
        _STATISTICS[image_size] = ShapeStatistics.from_scenes(
            sample_scene(rng, image_size, SceneConfig()) for _ in range(1000))
    return _STATISTICS[image_size]


def probe_prompt(capability: str, qa: QA) -> str:
    # Multiple-choice questions carry their own answer instruction; the others ask for a short answer.
    return qa.question if capability == "multiple_choice" else f"{qa.question}\n{SHORT_ANSWER_PROMPT}"


def normalise_answer(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return re.sub(r"\s+", " ", first_line.strip().rstrip(".").strip().lower())


@dataclass(frozen=True)
class ProbeItem:
    capability: str
    sample_id: str
    scene: Scene
    prompt: str
    target: str


def probe_items(per_capability: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> list[ProbeItem]:
    """The probe: `per_capability` questions of each capability on its own held-out scenes."""
    stats = shape_statistics(image_size)
    items = []
    for capability in CAPABILITIES:
        balancer = LabelBalancer()
        for index in range(per_capability):
            for attempt in range(100):
                rng = random.Random(f"shapes-engine-probe:{seed}:{capability}:{index}:{attempt}")
                scene = draw_scene(capability, rng, image_size)
                qa = QA_GENERATORS[capability](Context(rng, scene, stats, balancer))
                if qa is not None:
                    break
            else:
                raise RuntimeError(f"probe {capability} {index}: no question after 100 scenes")
            items.append(ProbeItem(capability, f"{capability}-{index:04d}", scene, probe_prompt(capability, qa), qa.short))
    return items


class ShapesProbe:
    """The engine's evaluator in the world (eval-side interface of dataengine.loop)."""

    def __init__(self, per_capability: int = 200, seed: int = 0, image_size: int = IMAGE_SIZE, batch_size: int = 32,
                 max_new_tokens: int = 8, progress: bool = True) -> None:
        self.capabilities = list(CAPABILITIES)
        self.items = probe_items(per_capability, seed, image_size)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.progress = progress

    def signatures(self) -> frozenset:
        return frozenset(item.scene.signature() for item in self.items)

    def evaluate(self, checkpoint: Path, folder: Path) -> list:
        from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
        from crystalvlm.eval.analysis import Outcome
        from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest

        engine = GenerationEngine.from_checkpoint(checkpoint, batch_size=self.batch_size)
        requests = [GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\n{item.prompt}")], [render_scene(item.scene)])
                    for item in self.items]
        results = engine.generate(requests, DecodingConfig(strategy="greedy", max_new_tokens=self.max_new_tokens),
                                  progress=self.progress)
        images = Path(folder) / "images"
        images.mkdir(parents=True, exist_ok=True)
        outcomes = []
        for item, result in zip(self.items, results):
            image = images / f"{item.sample_id}.png"
            if not image.is_file():  # the worst examples point at their images
                render_scene(item.scene).save(image)
            right = normalise_answer(result.text) == normalise_answer(item.target)
            outcomes.append(Outcome(item.capability, float(right), item.sample_id, item.prompt, result.text.strip(),
                                    item.target, str(image)))
        return outcomes


def world_records(counts: dict[str, int], folder: Path, seed: int, excluded: frozenset = frozenset(),
                  image_size: int = IMAGE_SIZE, namespace: str = "shapes-engine-data") -> list[dict]:
    """`counts[capability]` correct records in the world mix's formats, images under folder/images."""
    stats = shape_statistics(image_size)
    balancer = LabelBalancer()
    records = []
    for capability, count in counts.items():
        if capability not in QA_GENERATORS:
            raise KeyError(f"the shapes world has no capability {capability!r}; it has {', '.join(CAPABILITIES)}")
        for index in range(count):
            for attempt in range(100):
                rng = random.Random(f"{namespace}:{seed}:{capability}:{index}:{attempt}")
                scene = draw_scene(capability, rng, image_size)
                if scene.signature() in excluded:
                    continue
                turns = image_task_turns(capability, Context(rng, scene, stats, balancer))
                if turns:
                    break
            else:
                raise RuntimeError(f"{capability} record {index}: no usable scene after 100 draws")
            name = f"{capability}_{index:05d}.png"
            render_scene(scene).save(Path(folder) / "images" / name)
            records.append(_image_record(f"engine-{capability}-{index:05d}", name, turns))
    random.Random(f"{namespace}-order:{seed}").shuffle(records)
    return records


class ShapesWorldSource:
    """The world's generator: correct records of the requested capabilities (source side of dataengine.loop)."""

    description = "shapes world generator (ground truth)"

    def __init__(self, excluded: frozenset = frozenset(), image_size: int = IMAGE_SIZE) -> None:
        self.excluded = excluded
        self.image_size = image_size

    def generate(self, counts: dict[str, int], folder: Path, seed: int, profile: dict, checkpoint: Path,
                 workspace: Path):
        from crystalvlm.dataengine.loop import GeneratedData

        (Path(folder) / "images").mkdir(parents=True, exist_ok=True)
        return GeneratedData(world_records(counts, folder, seed, self.excluded, self.image_size))


def unlabelled_scene(index: int, seed: int = 0, excluded: frozenset = frozenset(),
                     image_size: int = IMAGE_SIZE) -> Scene:
    """The scene of unlabelled image `index` (the world keeps it to score what VIGC makes of the image)."""
    for attempt in range(100):
        scene = draw_scene("any", random.Random(f"shapes-engine-unlabelled:{seed}:{index}:{attempt}"), image_size)
        if scene.signature() not in excluded:
            return scene
    raise RuntimeError(f"unlabelled image {index}: every drawn scene repeats an excluded one")


def write_unlabelled_images(folder: Path, count: int, seed: int = 0, excluded: frozenset = frozenset(),
                            image_size: int = IMAGE_SIZE) -> list[Path]:
    """`count` scene images with no annotation (VIGC's input), written once; the same on every call."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"unlabelled_{index:05d}.png"
        if not path.is_file():
            staging = path.with_name(f".{path.name}.partial.png")
            render_scene(unlabelled_scene(index, seed, excluded, image_size)).save(staging)
            staging.replace(path)
        paths.append(path)
    return paths


def described_images(folder: Path, count: int, seed: int = 0, excluded: frozenset = frozenset(),
                     image_size: int = IMAGE_SIZE) -> list:
    """The unlabelled images with the world's detailed description of each: what a text-only LLM
    endpoint is told about an image."""
    from crystalvlm.dataengine.endpoint import DescribedImage
    from crystalvlm.worlds.shapes.captions import detailed_description

    paths = write_unlabelled_images(folder, count, seed, excluded, image_size)
    return [DescribedImage(path, detailed_description(unlabelled_scene(index, seed, excluded, image_size)))
            for index, path in enumerate(paths)]


def engine_stage(epochs: float = ENGINE_EPOCHS, lr: float = ENGINE_LR):
    """The finetune stage each engine round runs: recipe tiny's finetune stage at learning rate `lr`,
    `epochs` over the round's records."""
    from crystalvlm.train.recipe import load_recipe

    stage = load_recipe("tiny", [], {"world": "unused", "run_dir": "unused"}).stage("finetune")
    return replace(stage, epochs=epochs, max_steps=None, data=[], lr={part: lr for part in stage.lr})


def prepare_start_model(out: Path, world: Path | None = None, finetune_steps: int = START_FINETUNE_STEPS,
                        progress: bool = True) -> Path:
    """The engine's starting model under `out/start` (module docstring); the world is prepared under
    `out/world` unless a prepared shapes world is given (it is only read). Resumable: finished steps are kept."""
    from crystalvlm.train.recipe import apply_overrides, load_recipe, read_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe
    from crystalvlm.worlds.shapes.world import ShapesWorld

    out = Path(out)
    if world is None:
        world = out / "world"
        settings = apply_overrides(read_recipe("tiny"), [])["prepare"]
        ShapesWorld().prepare(world, settings, seed=0, progress=progress)
    else:
        missing = [name for name in ("align.json", "finetune.json", "parts/clip", "parts/lm", "images")
                   if not (Path(world) / name).exists()]
        if missing:
            raise FileNotFoundError(f"--world {world} is not a prepared shapes world (missing {', '.join(missing)})")
    recipe = load_recipe("tiny", [f"stages.finetune.max_steps={finetune_steps}"],
                         {"world": str(world), "run_dir": str(out / "start")})
    results = train_recipe(recipe, TrainOptions(run_dir=out / "start", resume=True, progress=progress))
    return results[-1].checkpoint
