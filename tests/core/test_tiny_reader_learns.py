"""The reader pretraining (multi-label tagging of each image's caption words) must learn what is in
an image, save a tower the LLaVA builder loads, and measure itself on pages it did not train on."""

from __future__ import annotations

import json

import pytest
import torch

from crystalvlm.worlds.parts.reader import caption_labels, label_recall, pretrain_tiny_reader


def test_caption_labels_are_a_sorted_vocabulary_and_a_multi_hot_matrix():
    vocabulary, targets = caption_labels(["red circle red", "blue square", ""])
    assert vocabulary == ["blue", "circle", "red", "square"]
    assert targets.tolist() == [[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]]  # a repeated word counts once


def test_label_recall_counts_true_labels_among_each_rows_top_k():
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.0],  # top 2 = labels 0 and 2: one of two right
                           [0.0, 0.0, 0.7, 0.1],  # top 1 = label 2: right
                           [0.5, 0.5, 0.5, 0.5]])  # no true labels: not counted
    assert label_recall(scores, targets) == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def shape_pairs(tmp_path_factory):
    from crystalvlm.worlds.shapes.writer import write_shapes_world

    world = tmp_path_factory.mktemp("reader-world")
    write_shapes_world(world, n_train=320, n_eval=4, seed=5, image_size=48, progress=False)
    return [(world / "images" / r["image"], r["caption"])
            for r in map(json.loads, (world / "clip_pairs.jsonl").read_text().splitlines())]


def test_the_reader_learns_what_held_out_images_show_and_saves_a_loadable_tower(shape_pairs, tmp_path):
    from transformers import CLIPVisionModel

    from crystalvlm.worlds.parts.tiny import tiny_vision_config

    vision = tiny_vision_config(image_size=48, patch_size=16, hidden=64, layers=3)
    report = pretrain_tiny_reader(shape_pairs, vision, tmp_path / "vision", steps=200, lr=2e-3,
                                  held_out_fraction=0.1, seed=0, progress=False)
    assert report.steps == 200 and report.held_out == 32
    # A tower that sees nothing scores the chance recall; this one must read most labels right.
    assert report.held_out_recall > report.chance_recall + 0.3, (report.held_out_recall, report.chance_recall)
    assert report.last_loss < 0.5 * report.first_loss
    tower = CLIPVisionModel.from_pretrained(tmp_path / "vision")
    assert tower.config.image_size == 48 and tower.config.hidden_size == 64 and tower.config.num_hidden_layers == 3


def test_the_same_seed_gives_the_same_run(shape_pairs, tmp_path):
    from crystalvlm.worlds.parts.tiny import tiny_vision_config

    vision = tiny_vision_config(image_size=48, patch_size=16, hidden=32, layers=1)
    first = pretrain_tiny_reader(shape_pairs[:64], vision, tmp_path / "a", steps=5, seed=1, progress=False)
    second = pretrain_tiny_reader(shape_pairs[:64], vision, tmp_path / "b", steps=5, seed=1, progress=False)
    assert first.losses == second.losses
    other = pretrain_tiny_reader(shape_pairs[:64], vision, tmp_path / "c", steps=5, seed=2, progress=False)
    assert other.losses != first.losses


def test_no_pairs_is_a_clear_error(tmp_path):
    from crystalvlm.worlds.parts.tiny import tiny_vision_config

    with pytest.raises(ValueError, match="no .screenshot, caption. pairs"):
        pretrain_tiny_reader([], tiny_vision_config(48, 16, 32, 1), tmp_path / "v", steps=1, progress=False)


def test_mean_pooling_also_learns_and_an_unknown_pooling_is_refused(shape_pairs, tmp_path):
    from crystalvlm.worlds.parts.tiny import tiny_vision_config

    vision = tiny_vision_config(image_size=48, patch_size=16, hidden=64, layers=3)
    report = pretrain_tiny_reader(shape_pairs, vision, tmp_path / "vision", steps=200, lr=2e-3,
                                  held_out_fraction=0.1, pooling="mean", seed=0, progress=False)
    assert report.held_out_recall > report.chance_recall + 0.3, (report.held_out_recall, report.chance_recall)
    with pytest.raises(ValueError, match="pooling must be one of"):
        pretrain_tiny_reader(shape_pairs, vision, tmp_path / "other", steps=1, pooling="sum", progress=False)


def test_patch_word_labels_name_the_word_covering_most_of_each_patch():
    from crystalvlm.worlds.parts.reader import patch_word_labels

    # A 2 x 2 grid of patches, each 0.5 of the image on a side.
    pages = [
        [["cat", 0.0, 0.0, 0.5, 0.5],  # exactly the top-left patch
         ["dog", 0.5, 0.5, 0.5, 0.05]],  # a sliver (10%) of the bottom-right patch: below the 20% threshold
        [["dog", 0.1, 0.6, 0.8, 0.3],  # 60% of bottom-left and 60% of bottom-right...
         ["cat", 0.6, 0.5, 0.4, 0.45]],  # ...but 72% of bottom-right: cat wins there
        [],
    ]
    vocabulary, labels = patch_word_labels(pages, grid=2)
    assert vocabulary == ["cat", "dog"]
    cat, dog = 1, 2
    assert labels.tolist() == [[cat, 0, 0, 0], [0, 0, dog, cat], [0, 0, 0, 0]]  # row-major, 0 = no word


def _coloured_patches(count: int, seed: int, tmp_path):
    """48-pixel images (3 x 3 patches of 16) with two or three coloured squares at random places,
    each square's colour name as its word and its box as the word's box."""
    import random

    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "gold": (230, 190, 20)}
    rng = random.Random(seed)
    pairs, boxes = [], []
    for index in range(count):
        image = Image.new("RGB", (48, 48), (255, 255, 255))
        page = []
        for _ in range(rng.randint(2, 3)):
            name = rng.choice(sorted(colours))
            x, y = rng.randrange(0, 33), rng.randrange(0, 33)
            image.paste(colours[name], (x, y, x + 16, y + 16))
            page.append([name, x / 48, y / 48, 16 / 48, 16 / 48])
        path = tmp_path / f"{index}.png"
        image.save(path)
        pairs.append((path, " ".join(word for word, *_ in page)))
        boxes.append(page)
    return pairs, boxes


def test_word_boxes_teach_each_patch_which_word_covers_it(tmp_path):
    from crystalvlm.worlds.parts.tiny import tiny_vision_config

    pairs, boxes = _coloured_patches(240, seed=3, tmp_path=tmp_path)
    vision = tiny_vision_config(image_size=48, patch_size=16, hidden=64, layers=2)
    report = pretrain_tiny_reader(pairs, vision, tmp_path / "vision", steps=150, lr=2e-3, held_out_fraction=0.2,
                                  word_boxes=boxes, seed=0, progress=False)
    # Labels in the wrong patch order (or none at all) would leave the dense head near chance.
    assert report.word_patch_accuracy > report.word_patch_chance + 0.4, (report.word_patch_accuracy,
                                                                        report.word_patch_chance)
    without = pretrain_tiny_reader(pairs, vision, tmp_path / "plain", steps=2, seed=0, progress=False)
    assert without.word_patch_accuracy is None
    with pytest.raises(ValueError, match="3 pages of word boxes for 240 pairs"):
        pretrain_tiny_reader(pairs, vision, tmp_path / "x", steps=1, word_boxes=boxes[:3], progress=False)
    with pytest.raises(ValueError, match="hold no words"):
        pretrain_tiny_reader(pairs, vision, tmp_path / "x", steps=1, word_boxes=[[] for _ in pairs], progress=False)
