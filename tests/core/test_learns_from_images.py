"""The whole training path really conditions on the image: after training on the colour world, the
answers' loss with the right images is far below the loss with the images shuffled across samples."""

from __future__ import annotations

import torch
import yaml

from tiny_fixtures import tiny_recipe, write_colour_world
from crystalvlm.data.collate import collate_conversations
from crystalvlm.data.dataset import ConversationDataset, DataSource, prepare_dataset
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import get_template
from crystalvlm.models.checkpoint import load_checkpoint
from crystalvlm.train.recipe import load_recipe
from crystalvlm.train.trainer import TrainOptions, _ce_sum, train_recipe


def _answer_loss(model, batch: dict, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(_ce_sum(model(**batch).logits, labels) / (labels[:, 1:] != -100).sum())


def test_trained_model_uses_the_image(tiny_tokenizer_dir, tmp_path):
    world = write_colour_world(tmp_path / "world", n=64)
    path = tiny_recipe(tmp_path, tiny_tokenizer_dir, world, epochs=30, batch_size=8)
    raw = yaml.safe_load(path.read_text())
    raw["stages"]["finetune"]["lr"] = {"projector": 1e-3, "llm": 1e-3}
    path.write_text(yaml.safe_dump(raw))
    final = train_recipe(load_recipe(str(path)), TrainOptions(run_dir=tmp_path / "run", progress=False))[-1].checkpoint

    model, processor, info = load_checkpoint(final)
    encoder = SampleEncoder.from_processor(processor, model.config, get_template(info.template), "pad", max_length=256)
    prepared = prepare_dataset([DataSource(world["qa"], world["images"])], encoder, progress=False)
    prepared.items = [item for item in prepared.items if item.record.has_image][:32]
    dataset = ConversationDataset(prepared, encoder)
    batch = collate_conversations([dataset[i] for i in range(len(dataset))], processor.tokenizer.pad_token_id)
    labels = batch.pop("labels")
    right = _answer_loss(model, batch, labels)
    # Shift by one: every sample now sees the image of a square of another colour (colours cycle).
    batch["pixel_values"] = batch["pixel_values"].roll(1, 0)
    shuffled = _answer_loss(model, batch, labels)
    assert right < 0.2 and shuffled > right + 0.5, (right, shuffled)
