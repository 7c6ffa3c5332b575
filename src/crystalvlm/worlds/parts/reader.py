"""Pretraining the tiny vision tower to read: multi-label tagging of what a screenshot shows.

A tiny tower trained contrastively learns colours and layout fast but words slowly, because a
caption that differs in one word is only one of many negatives. Here every word of the caption is
its own yes/no target: a linear head scores each vocabulary entry at every patch of the feature
layer the LLaVA reads (layer -2 by default), the scores are max-pooled over patches, and binary
cross-entropy compares them with the caption's words. Max-pooling means the evidence for "login"
has to come from some patch, so the patch features under a word learn to say which word it is,
which is what the language model needs when it writes the page's HTML.

Measured on the tiny web world's 128-pixel screenshots (16 interface words, 2,850 training pages,
1,500 steps at lr 2e-3, 147 s on 2 CPU cores): held-out recall of a page's words 0.68, chance
0.14. `pooling="mean"` instead asks every patch to carry what the whole page says, the way evenly
spread attention would read it; with captions numbered by element and place it reaches held-out
recall 0.61 (chance 0.04).

Word boxes (`word_boxes`, each word's box from the browser) add a dense objective: every patch
also says which word covers it (or none), a softmax over the words at each patch. Pooled tags say
a word is *somewhere*; the dense labels pin it to its patches, so the features a language model
attends to already name the word under them and it only has to learn the reading order. On the
same world this was the difference between a frozen tower whose words a small decoder could not
read out (0.04 of held-out summary words in place after 1,000 steps) and one it could (0.67 after
625 steps; held-out word-patch accuracy 0.66, chance 0.06; docs/web-world-status.md).

The tower is saved as a plain `CLIPVisionModel` checkpoint, which the model builder loads like
the vision half of any CLIP.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from crystalvlm.worlds.parts.loop import PretrainReport, load_pixels, optimise, report, warmup_cosine


@dataclass
class ReaderReport(PretrainReport):
    held_out: int = 0  # pages kept out of training to measure recall on
    held_out_recall: float | None = None  # mean over held-out pages of |top-k labels ∩ true labels| / k, k = |true|
    chance_recall: float | None = None  # the same for labels drawn at random: mean |true| / vocabulary size
    word_patch_accuracy: float | None = None  # held-out patches under a word: the dense head names that word
    word_patch_chance: float | None = None  # the same by always naming the commonest word


POOLING = ("max", "mean")


class _Tagger(torch.nn.Module):
    def __init__(self, vision_config: dict, labels: int, feature_layer: int, pooling: str, patch_words: int = 0) -> None:
        super().__init__()
        self.tower = CLIPVisionModel(CLIPVisionConfig(**vision_config))
        self.head = torch.nn.Linear(vision_config["hidden_size"], labels)
        # Which word covers each patch: class 0 is "no word", 1.. the words (only with word boxes).
        self.patch_head = torch.nn.Linear(vision_config["hidden_size"], patch_words + 1) if patch_words else None
        self.feature_layer = feature_layer
        self.pooling = pooling

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, labels) pooled tag scores and, with a patch head, (B, P, words + 1) per-patch word scores."""
        hidden = self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states[self.feature_layer]
        patches = hidden[:, 1:]  # (B, P, D): the class token dropped, as the LLaVA's "default" selection does
        scores = self.head(patches)  # (B, P, labels)
        # max: each label's best patch; mean: what evenly spread attention over the patches would read.
        pooled = scores.max(dim=1).values if self.pooling == "max" else scores.mean(dim=1)
        return pooled, (self.patch_head(patches) if self.patch_head is not None else None)


WordBoxes = list[list]  # one page: [[word, x, y, w, h], ...], the box as fractions of the screenshot


def patch_word_labels(pages: list[WordBoxes], grid: int, min_cover: float = 0.2) -> tuple[list[str], torch.Tensor]:
    """The sorted words of all pages and a (N, grid * grid) tensor naming, for each patch in row-major
    order, the word that covers the largest share of it (1 + its index) or 0 when no word covers at
    least `min_cover` of it. A 16-pixel text line over 16-pixel patches touches two rows of
    patches; the threshold keeps the sliver in the second row from being labelled."""
    vocabulary = sorted({box[0] for page in pages for box in page})
    index = {word: i + 1 for i, word in enumerate(vocabulary)}
    labels = torch.zeros(len(pages), grid * grid, dtype=torch.long)
    cell = 1.0 / grid
    for row_index, page in enumerate(pages):
        cover = torch.zeros(grid * grid)
        for word, x, y, w, h in page:
            for row in range(max(0, int(y / cell)), min(grid, int((y + h) / cell) + 1)):
                for column in range(max(0, int(x / cell)), min(grid, int((x + w) / cell) + 1)):
                    across = min(x + w, (column + 1) * cell) - max(x, column * cell)
                    down = min(y + h, (row + 1) * cell) - max(y, row * cell)
                    share = max(0.0, across) * max(0.0, down) / (cell * cell)
                    patch = row * grid + column
                    if share >= min_cover and share > cover[patch]:
                        cover[patch] = share
                        labels[row_index, patch] = index[word]
    return vocabulary, labels


def caption_labels(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """The sorted vocabulary of the captions' words and a (N, V) multi-hot matrix of which appear."""
    vocabulary = sorted({word for caption in captions for word in caption.split()})
    index = {word: i for i, word in enumerate(vocabulary)}
    targets = torch.zeros(len(captions), len(vocabulary))
    for row, caption in enumerate(captions):
        for word in caption.split():
            targets[row, index[word]] = 1.0
    return vocabulary, targets


def label_recall(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over rows of the fraction of true labels among the row's k best scores, k = its true count."""
    hits = total = 0.0
    for row_scores, row_targets in zip(scores, targets):
        k = int(row_targets.sum().item())
        if k == 0:
            continue
        hits += row_targets[row_scores.topk(k).indices].sum().item()
        total += k
    return hits / total if total else 0.0


def pretrain_tiny_reader(
    pairs: list[tuple[Path, str]],
    vision_config: dict,
    out_dir: Path,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    feature_layer: int = -2,
    held_out_fraction: float = 0.05,
    pooling: str = "max",
    word_boxes: list[WordBoxes] | None = None,
    seed: int = 0,
    image_mean=(0.48145466, 0.4578275, 0.40821073),
    image_std=(0.26862954, 0.26130258, 0.27577711),
    progress: bool = True,
) -> ReaderReport:
    """Train the tower on (screenshot, caption) pairs for `steps` steps (warmup, then cosine decay),
    save it to `out_dir` as a CLIPVisionModel and report held-out recall of the captions' words.
    `word_boxes`, one list per pair, adds the per-patch word objective (see the module docstring).

    Deterministic for a seed: the same pages, order and weights on any machine."""
    if not pairs:
        raise ValueError("pretrain_tiny_reader: no (screenshot, caption) pairs")
    if pooling not in POOLING:
        raise ValueError(f"pretrain_tiny_reader: pooling must be one of {POOLING}, got {pooling!r}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vision = {k: v for k, v in vision_config.items() if k != "model_type"}
    vocabulary, targets = caption_labels([caption for _, caption in pairs])
    patch_labels = None
    patch_vocabulary: list[str] = []
    if word_boxes is not None:
        if len(word_boxes) != len(pairs):
            raise ValueError(f"pretrain_tiny_reader: {len(word_boxes)} pages of word boxes for {len(pairs)} pairs")
        grid = vision["image_size"] // vision["patch_size"]
        patch_vocabulary, patch_labels = patch_word_labels(word_boxes, grid)  # (N, grid * grid)
        if not patch_vocabulary:
            raise ValueError("pretrain_tiny_reader: word boxes were given but hold no words "
                             "(render with RenderSettings(word_boxes=True))")
    pixels = load_pixels([path for path, _ in pairs], vision["image_size"], image_mean, image_std)  # (N, 3, S, S)
    shuffled = list(range(len(pairs)))
    rng.shuffle(shuffled)
    held = shuffled[:int(len(pairs) * held_out_fraction)] if len(pairs) >= 40 else []
    train = shuffled[len(held):]

    model = _Tagger(vision, len(vocabulary), feature_layer, pooling, patch_words=len(patch_vocabulary))
    order: list[int] = []

    def step_loss(step: int) -> torch.Tensor:
        nonlocal order
        if len(order) < batch_size:  # epochs of the shuffled training pages, drawn batch by batch
            fresh = list(train)
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[:batch_size], order[batch_size:]
        pooled, per_patch = model(pixels[batch])  # (B, labels), (B, P, words + 1) or None
        loss = torch.nn.functional.binary_cross_entropy_with_logits(pooled, targets[batch])
        if per_patch is not None:
            loss = loss + torch.nn.functional.cross_entropy(per_patch.flatten(0, 1), patch_labels[batch].flatten())
        return loss

    losses, seconds = optimise(model, step_loss, steps, lr, warmup_cosine(max(1, min(50, steps // 10))),
                               weight_decay=0.0, description="pretrain tiny reader", progress=progress)

    recall = chance = patch_accuracy = patch_chance = None
    if held:
        model.eval()
        with torch.no_grad():
            outputs = [model(pixels[held[i:i + 64]]) for i in range(0, len(held), 64)]
        scores = torch.cat([pooled for pooled, _ in outputs])
        recall = label_recall(scores, targets[held])
        chance = targets[held].sum(dim=1).mean().item() / len(vocabulary)
        if patch_labels is not None:
            named = torch.cat([per_patch.argmax(-1) for _, per_patch in outputs])  # (H, P)
            truth = patch_labels[held]
            under_words = truth > 0
            if under_words.any():
                patch_accuracy = (named[under_words] == truth[under_words]).float().mean().item()
                patch_chance = truth[under_words].bincount().max().item() / under_words.sum().item()
    model.tower.save_pretrained(out_dir)
    return ReaderReport(**report(losses, seconds), held_out=len(held), held_out_recall=recall, chance_recall=chance,
                        word_patch_accuracy=patch_accuracy, word_patch_chance=patch_chance)
