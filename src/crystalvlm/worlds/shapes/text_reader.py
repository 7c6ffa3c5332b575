"""A tiny reader of the shapes world's written text, trained on the world's own rendered words.

No OCR model is installed here, so the world trains its own: a tiny CLIP vision tower with a linear
head over its max-pooled patch features that names the scene's text (one of the texts seen in
training) or "no text". It plugs into `crystalvlm data parrot` as a text reader:

    crystalvlm data parrot pairs.jsonl --out curated.jsonl --image-folder WORLD/images \\
        --reader crystalvlm.worlds.shapes.text_reader:load_reader --reader-model READER_DIR

Saved as a CLIPVisionModel folder plus `head.safetensors` and `texts.json` (its labels).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from crystalvlm.worlds.parts.loop import load_pixels, optimise, report, warmup_cosine

NO_TEXT = ""
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class _TextClassifier(torch.nn.Module):
    def __init__(self, tower: CLIPVisionModel, labels: int) -> None:
        super().__init__()
        self.tower = tower
        self.head = torch.nn.Linear(tower.config.hidden_size, labels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.tower(pixel_values=pixels).last_hidden_state[:, 1:]  # (B, P, D)
        return self.head(patches).max(dim=1).values  # (B, labels): each label's best patch


def train_text_reader(images: list[Path], texts: list[str | None], vision_config: dict, out_dir: Path, steps: int,
                      batch_size: int = 64, lr: float = 1e-3, held_out_fraction: float = 0.1, seed: int = 0,
                      progress: bool = True) -> dict:
    """Train on (image, its text or None) and save to `out_dir`; return the loss record and the
    held-out accuracy (exact text, "no text" included) and the accuracy on held-out images with text."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    labels = [NO_TEXT] + sorted({t for t in texts if t})
    index = {text: i for i, text in enumerate(labels)}
    targets = torch.tensor([index[t or NO_TEXT] for t in texts])
    side = vision_config["image_size"]
    pixels = load_pixels(images, side, MEAN, STD)  # (N, 3, S, S)
    order_all = list(range(len(images)))
    rng.shuffle(order_all)
    held = order_all[: int(len(images) * held_out_fraction)]
    train = order_all[len(held):]
    vision = {k: v for k, v in vision_config.items() if k != "model_type"}
    model = _TextClassifier(CLIPVisionModel(CLIPVisionConfig(**vision)), len(labels))
    queue: list[int] = []

    def step_loss(step: int) -> torch.Tensor:
        nonlocal queue
        if len(queue) < batch_size:
            fresh = list(train)
            rng.shuffle(fresh)
            queue += fresh
        batch, queue = queue[:batch_size], queue[batch_size:]
        return torch.nn.functional.cross_entropy(model(pixels[batch]), targets[batch])

    losses, seconds = optimise(model, step_loss, steps, lr, warmup_cosine(max(1, min(50, steps // 10))),
                               weight_decay=0.0, description="train shapes text reader", progress=progress)
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(pixels[held[i:i + 256]]).argmax(-1) for i in range(0, len(held), 256)])
    truth = targets[held]
    with_text = truth != 0
    out_dir = Path(out_dir)
    model.tower.save_pretrained(out_dir)
    from safetensors.torch import save_file

    save_file({"weight": model.head.weight.detach().contiguous(), "bias": model.head.bias.detach().contiguous()},
              str(out_dir / "head.safetensors"))
    (out_dir / "texts.json").write_text(json.dumps(labels), encoding="utf-8")
    return {**report(losses, seconds), "labels": len(labels), "held_out": len(held),
            "held_out_accuracy": (predicted == truth).float().mean().item() if held else None,
            "held_out_text_accuracy": (predicted[with_text] == truth[with_text]).float().mean().item()
            if with_text.any() else None}


class ShapesTextReader:
    """`read(images)`: the text the trained reader sees in each image ([] for "no text")."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        self.labels = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
        tower = CLIPVisionModel.from_pretrained(folder)
        self.model = _TextClassifier(tower, len(self.labels)).eval()
        self.model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
        self.side = tower.config.image_size

    def read(self, images: list[Image.Image]) -> list[list[str]]:
        from crystalvlm.data.images import expand_to_square

        fill = tuple(int(round(m * 255)) for m in MEAN)
        arrays = []
        for image in images:
            square = expand_to_square(image.convert("RGB"), fill).resize((self.side, self.side), Image.BICUBIC)
            arrays.append(torch.frombuffer(bytearray(square.tobytes()), dtype=torch.uint8).view(self.side, self.side, 3))
        pixels = torch.stack(arrays).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
        pixels = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            predicted = self.model(pixels).argmax(-1).tolist()
        return [[self.labels[i]] if self.labels[i] != NO_TEXT else [] for i in predicted]


def load_reader(model_dir: str | None) -> ShapesTextReader:
    """The `--reader crystalvlm.worlds.shapes.text_reader:load_reader` factory."""
    if not model_dir:
        raise ValueError("the shapes text reader needs --reader-model (a folder written by train_text_reader)")
    return ShapesTextReader(Path(model_dir))
