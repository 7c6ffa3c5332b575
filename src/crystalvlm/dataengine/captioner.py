"""Detailed captioning at scale, ShareGPT4V's recipe (`crystalvlm data caption`).

1. `train_captioner`: finetune a model (any crystalvlm/HF Llava checkpoint) on a small set of
   high-quality detailed captions (LLaVA-format records) into a captioner, one training stage run by
   the project's trainer (resumable, logged like any stage).
2. `caption_batch`: caption a batch of image records with the batched `GenerationEngine`; a per-batch
   map, so the same code runs in one process, in worker processes, or on a distributed engine.

The captions then replace short ones in alignment data, or stand in for an equal number of
instruction samples (the study in docs/data-curation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crystalvlm.data.images import ImageError, open_image

DEFAULT_PROMPT = "Describe the image in detail."


@dataclass
class CaptionSettings:
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = 128
    image_key: str = "image"
    caption_key: str = "caption"  # where the caption is written (an existing value is replaced)
    image_folder: Path | None = None  # image paths are relative to it (and must stay inside it)
    decoding: str = "greedy"  # a DecodingConfig string: greedy, beam:num_beams=3, ...


@dataclass
class Captioned:
    """One record's result: `record` with its caption (`reason` None), or `reason` why it has none."""

    record: object
    reason: str | None = None
    detail: dict = field(default_factory=dict)
    truncated: bool = False  # the caption hit max_new_tokens


def caption_batch(records: list, engine, settings: CaptionSettings) -> list[Captioned]:
    """Caption every record whose image opens, in one call to the batched engine; one result per
    record, in order. A record without an image path, or whose image is missing or unreadable, or
    for which the model writes nothing, gets a reason instead of a caption; nothing raises for one
    record."""
    from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
    from crystalvlm.infer.engine import DecodingConfig, GenerationRequest

    results: list[Captioned | None] = [None] * len(records)
    requests, indices = [], []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            results[index] = Captioned(record, "not a JSON object")
            continue
        relative = record.get(settings.image_key)
        if not isinstance(relative, str) or not relative:
            results[index] = Captioned(record, "missing image", {"error": f"no image path in field {settings.image_key!r}"})
            continue
        try:
            image = open_image(settings.image_folder or Path("."), relative)
        except ImageError as error:
            reason = "missing image" if "not found" in str(error) else "bad image"
            results[index] = Captioned(record, reason, {"error": str(error)})
            continue
        requests.append(GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\n{settings.prompt}")], [image]))
        indices.append(index)
    if requests:
        config = DecodingConfig.parse(settings.decoding, max_new_tokens=settings.max_new_tokens)
        answers = engine.generate(requests, config)
        for index, answer in zip(indices, answers):
            text = answer.text.strip()
            if not text:
                results[index] = Captioned(records[index], "empty caption", {"error": "the captioner wrote nothing"})
                continue
            captioned = dict(records[index])
            captioned[settings.caption_key] = text
            results[index] = Captioned(captioned, truncated=answer.finish_reason == "length")
    return results  # type: ignore[return-value]


def train_captioner(base: Path, data_file: Path, image_folder: Path | None, out_dir: Path, steps: int,
                    batch_size: int = 16, lr: float = 1e-3, tunable: tuple[str, ...] = ("projector", "llm"),
                    max_length: int = 512, seed: int = 0, progress: bool = True) -> Path:
    """Finetune checkpoint `base` on the detailed captions in `data_file` (LLaVA-format JSON or JSON
    lines) for `steps` optimizer steps with the project's trainer; the captioner is written to
    `out_dir/captioner/final` and returned. A finished captioner is reused; a cut run resumes."""
    from crystalvlm.data.dataset import DataSource
    from crystalvlm.models.checkpoint import read_sidecar
    from crystalvlm.train.recipe import Recipe, StageConfig
    from crystalvlm.train.trainer import TrainOptions, final_checkpoint, train_stage

    if steps < 1:
        raise ValueError(f"captioner training needs at least 1 step, got {steps}")
    out_dir = Path(out_dir)
    final = final_checkpoint(out_dir, "captioner")
    if (final / "config.json").is_file():
        return final
    info = read_sidecar(Path(base))
    if not info.template:
        raise ValueError(f"{base}: the checkpoint names no conversation template; the captioner is trained with it")
    stage = StageConfig(name="captioner", template=info.template, data=[], tunable=list(tunable),
                        lr={part: lr for part in tunable}, max_steps=steps, batch_size=batch_size,
                        max_length=max_length)
    recipe = Recipe(name="captioner", seed=seed, model={}, image_mode=info.image_mode, datasets={}, stages=[stage],
                    raw={"name": "captioner", "base": str(base), "data": str(data_file), "steps": steps})
    options = TrainOptions(run_dir=out_dir, data=DataSource(Path(data_file), Path(image_folder) if image_folder else None),
                           resume=True, progress=progress)
    return train_stage(recipe, stage, options, Path(base)).checkpoint
