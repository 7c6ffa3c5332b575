"""The reader pretraining (multi-label tagging of each image's caption words) must learn what is in
an image, save a tower the LLaVA builder loads, and measure itself on pages it did not train on."""

from __future__ import annotations

import json

import pytest
import torch

from crystalvlm.train.pretrain_reader import caption_labels, label_recall, pretrain_tiny_reader


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
    from crystalvlm.data.synthetic.shapes_world import write_shapes_world

    world = tmp_path_factory.mktemp("reader-world")
    write_shapes_world(world, n_train=320, n_eval=4, seed=5, image_size=48, progress=False)
    return [(world / "images" / r["image"], r["caption"])
            for r in map(json.loads, (world / "clip_pairs.jsonl").read_text().splitlines())]


def test_the_reader_learns_what_held_out_images_show_and_saves_a_loadable_tower(shape_pairs, tmp_path):
    from transformers import CLIPVisionModel

    from crystalvlm.models.tiny import tiny_vision_config

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
    from crystalvlm.models.tiny import tiny_vision_config

    vision = tiny_vision_config(image_size=48, patch_size=16, hidden=32, layers=1)
    first = pretrain_tiny_reader(shape_pairs[:64], vision, tmp_path / "a", steps=5, seed=1, progress=False)
    second = pretrain_tiny_reader(shape_pairs[:64], vision, tmp_path / "b", steps=5, seed=1, progress=False)
    assert first.losses == second.losses
    other = pretrain_tiny_reader(shape_pairs[:64], vision, tmp_path / "c", steps=5, seed=2, progress=False)
    assert other.losses != first.losses


def test_no_pairs_is_a_clear_error(tmp_path):
    from crystalvlm.models.tiny import tiny_vision_config

    with pytest.raises(ValueError, match="no .screenshot, caption. pairs"):
        pretrain_tiny_reader([], tiny_vision_config(48, 16, 32, 1), tmp_path / "v", steps=1, progress=False)


def test_mean_pooling_also_learns_and_an_unknown_pooling_is_refused(shape_pairs, tmp_path):
    from crystalvlm.models.tiny import tiny_vision_config

    vision = tiny_vision_config(image_size=48, patch_size=16, hidden=64, layers=3)
    report = pretrain_tiny_reader(shape_pairs, vision, tmp_path / "vision", steps=200, lr=2e-3,
                                  held_out_fraction=0.1, pooling="mean", seed=0, progress=False)
    assert report.held_out_recall > report.chance_recall + 0.3, (report.held_out_recall, report.chance_recall)
    with pytest.raises(ValueError, match="pooling must be one of"):
        pretrain_tiny_reader(shape_pairs, vision, tmp_path / "other", steps=1, pooling="sum", progress=False)
