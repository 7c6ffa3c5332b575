"""A data-engine run at test scale on the colour world (tests/tiny_fixtures.py), as a script so that a
test can kill it: `python colour_engine.py CHECKPOINT IMAGES OUT ROUNDS [--resume]`.

Capabilities are the four colours; the probe asks the colour of eight images (two per colour); the
source writes "What colour is the square?" records about images of the requested colours."""

from __future__ import annotations

import sys
from pathlib import Path

from crystalvlm.dataengine.finetune import StageFinetuner
from crystalvlm.dataengine.loop import DataEngine, EngineSettings, GeneratedData
from crystalvlm.eval.analysis import Outcome
from crystalvlm.train.recipe import StageConfig

COLOURS = ("red", "green", "blue", "yellow")
QUESTION = "What colour is the square?\nAnswer the question using a single word or phrase."


def colour_of(index: int) -> str:
    return COLOURS[index % len(COLOURS)]  # write_colour_world's order


class ColourProbe:
    capabilities = list(COLOURS)

    def __init__(self, images: Path) -> None:
        self.images = images

    def evaluate(self, checkpoint: Path, folder: Path) -> list[Outcome]:
        from crystalvlm.data.images import open_image
        from crystalvlm.data.templates import Turn
        from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest

        engine = GenerationEngine.from_checkpoint(checkpoint, batch_size=8)
        picked = list(range(8))
        requests = [GenerationRequest([Turn("user", f"<image>\n{QUESTION}")],
                                      [open_image(self.images, f"img{i:03d}.png")]) for i in picked]
        results = engine.generate(requests, DecodingConfig(strategy="greedy", max_new_tokens=4))
        return [Outcome(colour_of(i), float(r.text.strip().lower() == colour_of(i)), f"probe-{i}", QUESTION,
                        r.text, colour_of(i).capitalize()) for i, r in zip(picked, results)]


class ColourSource:
    description = "colour world"

    def __init__(self, images: Path) -> None:
        self.images = images

    def generate(self, counts, folder, seed, profile, checkpoint, workspace):
        import shutil

        records = []
        for colour, count in counts.items():
            candidates = [i for i in range(8, 24) if colour_of(i) == colour]
            for n in range(count):
                index = candidates[(seed + n) % len(candidates)]
                name = f"img{index:03d}.png"
                shutil.copyfile(self.images / name, Path(folder) / "images" / name)
                records.append({"id": f"{colour}-{n}", "image": name, "conversations": [
                    {"from": "human", "value": f"<image>\n{QUESTION}"},
                    {"from": "gpt", "value": colour.capitalize()}]})
        return GeneratedData(records, [{"capability": "red", "reason": "an example of a dropped record"}])


def main(argv: list[str]) -> None:
    checkpoint, images, out, rounds = Path(argv[0]), Path(argv[1]), Path(argv[2]), int(argv[3])
    stage = StageConfig(name="finetune", template="vicuna_v1", data=[], tunable=["projector", "llm"],
                        lr={"projector": 5e-3, "llm": 5e-3}, epochs=1, batch_size=4, max_length=256)
    engine = DataEngine(out, EngineSettings(rounds=rounds, budget=4), checkpoint, ColourProbe(images),
                        ColourSource(images), StageFinetuner(stage, progress=False), progress=False,
                        reports=False)  # the HTML pages are tested in test_analysis.py
    engine.run(resume="--resume" in argv)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    main(sys.argv[1:])
