"""Text-only records train in any stage, alone or mixed with image records, on one or two processes.

With modality-length grouping a text-only record forms a text-only micro-batch; in the alignment
stage (only the projector trains) its loss used to have no grad_fn, and training died with
"element 0 of tensors does not require grad". The trainer now keeps the image path in the graph
of such a micro-batch with a zero contribution (`train.image_path_anchor`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_fixtures import tiny_model_section, tiny_recipe
from crystalvlm.data.collate import collate_conversations
from crystalvlm.data.dataset import ConversationDataset, DataSource, prepare_dataset
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import get_template
from crystalvlm.models.build import ModelSpec, build_llava
from crystalvlm.models.checkpoint import load_checkpoint
from crystalvlm.train.freeze import apply_stage_policy
from crystalvlm.train.image_path_anchor import keep_image_path_in_graph
from crystalvlm.train.recipe import load_recipe
from crystalvlm.train.trainer import TrainOptions, _ce_sum, train_recipe

HELLO = {"id": "hello", "conversations": [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello."}]}


def _text_record(index: int) -> dict:
    return {"id": f"text{index}", "conversations": [{"from": "human", "value": "Name a colour."},
                                                    {"from": "gpt", "value": ["Red", "Blue", "Green"][index % 3]}]}


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _image_records(colour_world, n: int) -> list[dict]:
    return [json.loads(line) for line in colour_world["qa"].read_text().splitlines()[:n]]


# ----------------------------------------------------------------------------- gradients, in process
@pytest.fixture()
def tiny_model_and_batches(colour_world, tiny_tokenizer_dir, tmp_path):
    """A tiny Llava and three batches: images only, text only, and both mixed in one batch."""
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    torch.manual_seed(0)
    template = get_template("vicuna_v1")
    model, processor = build_llava(ModelSpec.from_dict(tiny_model_section(tiny_tokenizer_dir, vocab + 8)),
                                   chat_template=template.chat_template_jinja())
    encoder = SampleEncoder.from_processor(processor, model.config, template, "pad", max_length=256)
    path = _write_jsonl(tmp_path / "mixed.jsonl", _image_records(colour_world, 2) + [HELLO, _text_record(1)])
    prepared = prepare_dataset([DataSource(path, colour_world["images"])], encoder)
    dataset = ConversationDataset(prepared, encoder)
    assert dataset.has_image == [True, True, False, False]

    def batch(indices):
        return collate_conversations([dataset[i] for i in indices], processor.tokenizer.pad_token_id)

    return model, {"images": batch([0, 1]), "text": batch([2, 3]), "mixed": batch([0, 2, 1, 3])}


def _loss(model, batch: dict) -> torch.Tensor:
    batch = dict(batch)
    labels = batch.pop("labels")
    return _ce_sum(model(**batch).logits, labels)


def _gradients(model, batches: list[dict]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor | None]]:
    """Losses and the gradients accumulated over `batches` (as micro-batches of one step)."""
    model.zero_grad(set_to_none=True)
    losses = []
    for batch in batches:
        loss = _loss(model, batch)
        loss.backward()
        losses.append(loss.detach())
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return losses, grads


def test_a_text_only_batch_reaches_the_projector_with_zero_gradient(tiny_model_and_batches):
    model, batches = tiny_model_and_batches
    apply_stage_policy(model, ["projector"], {"projector": 1e-3}, 0.0)
    # The failure being fixed: only the projector trains, and a text-only batch never reaches it.
    assert not _loss(model, batches["text"]).requires_grad
    with torch.no_grad():
        plain = _loss(model, batches["text"])

    handle = keep_image_path_in_graph(model)
    try:
        losses, grads = _gradients(model, [batches["text"]])
    finally:
        handle.remove()
    assert torch.isfinite(losses[0]) and losses[0].item() > 0
    assert torch.equal(losses[0], plain), "the anchor must not change the loss"
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads.values()), \
        "every projector parameter gets a gradient, and it is zero"


def test_the_anchor_changes_no_gradient_of_a_batch_with_images(tiny_model_and_batches):
    model, batches = tiny_model_and_batches
    apply_stage_policy(model, ["projector", "llm"], {"projector": 1e-3, "llm": 1e-3}, 0.0)
    before_losses, before = _gradients(model, [batches["mixed"]])
    reference_losses, reference = _gradients(model, [batches["images"]])  # the image part alone, no anchor
    handle = keep_image_path_in_graph(model)
    try:
        mixed_losses, mixed = _gradients(model, [batches["mixed"]])
        # One step of two micro-batches, images then text only: the text-only one adds exactly zero
        # to the projector's gradient, so it is bitwise the image micro-batch's gradient.
        _, accumulated = _gradients(model, [batches["images"], batches["text"]])
        text_losses, text_only = _gradients(model, [batches["text"]])
    finally:
        handle.remove()
    _, text_plain = _gradients(model, [batches["text"]])  # no anchor: the LLM's gradient as before

    assert torch.equal(mixed_losses[0], before_losses[0])
    for name in before:  # a batch that has images does not call the anchor: bitwise as before
        assert torch.equal(mixed[name], before[name]), name
    projector = [name for name in before if "multi_modal_projector" in name]
    assert projector
    for name in projector:
        assert torch.equal(accumulated[name], reference[name]), name
        assert torch.count_nonzero(text_only[name]) == 0 and text_plain[name] is None, name
        # Text-only samples contribute nothing to the projector in a mixed batch either.
        torch.testing.assert_close(mixed[name], reference[name], rtol=1e-4, atol=1e-6)
    for name in before:
        if name not in projector:
            assert torch.equal(text_only[name], text_plain[name]), f"{name}: the LLM's text gradient changed"


# ----------------------------------------------------------------------------- training, one process
def test_align_trains_on_six_image_records_and_one_text_only_record(colour_world, tiny_tokenizer_dir, tmp_path):
    """The reported reproduction, through the command line."""
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world)
    data = _write_jsonl(tmp_path / "data.jsonl", _image_records(colour_world, 6) + [HELLO])
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "crystalvlm.cli", "train", str(recipe), "--stage", "align",
                             "--data", str(data), "--image-folder", str(colour_world["images"]), "--max-steps", "4",
                             "--out", str(out), "--quiet"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "align/metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in rows)
    # Batch size 4: one step's global batch is the text-only record alone (tails go last).
    text_only_steps = [row for row in rows if row["grad_norm"] == 0.0]
    assert len(text_only_steps) == 1, rows
    assert "final loss" in result.stdout


def test_align_on_text_only_batches_alone_leaves_the_projector_as_built(colour_world, tiny_tokenizer_dir, tmp_path):
    from accelerate.utils import set_seed

    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, batch_size=2)))
    data = _write_jsonl(tmp_path / "text.jsonl", [HELLO] + [_text_record(i) for i in range(5)])
    result = train_recipe(recipe, TrainOptions(run_dir=tmp_path / "run", stages=["align"], data=DataSource(data, None),
                                               max_steps=3, progress=False))[0]
    rows = [json.loads(line) for line in (tmp_path / "run/align/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(row["loss"]) and row["grad_norm"] == 0.0 for row in rows)
    assert math.isfinite(result.final_loss)
    # Zero gradients from the first step on: AdamW's moments stay zero and the projector stays as built.
    set_seed(recipe.seed)
    built, _ = build_llava(ModelSpec.from_dict(recipe.model))
    trained, _, _ = load_checkpoint(result.checkpoint)
    projector = built.model.multi_modal_projector.state_dict()
    assert projector
    for name, tensor in trained.model.multi_modal_projector.state_dict().items():
        assert torch.equal(tensor, projector[name]), name


# ----------------------------------------------------------------------------- training, two processes
RANK_WEIGHTS = """
import sys
from safetensors.torch import save_file
from crystalvlm import cli
from crystalvlm.train import trainer

original_save = trainer.save

def save_and_dump_this_rank(run, model, processor):
    # Each rank's own copy of the weights, to compare across ranks after training.
    weights = run.accelerator.unwrap_model(model).state_dict()
    save_file({k: v.detach().contiguous().clone() for k, v in weights.items()},
              f"{run.folder}/rank{run.accelerator.process_index}.safetensors")
    return original_save(run, model, processor)

trainer.save = save_and_dump_this_rank
sys.exit(cli.main(sys.argv[1:]))
"""


def test_two_processes_where_one_rank_has_a_text_only_micro_batch(colour_world, tiny_tokenizer_dir, tmp_path):
    from crystalvlm.data.batching import epoch_batches

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Images and text mixed at random (no modality grouping), one sample per rank per step.
    records = _image_records(colour_world, 4) + [HELLO, _text_record(1), _text_record(2)]
    data = _write_jsonl(tmp_path / "data.jsonl", records)
    has_image = ["image" in r for r in records]
    steps = 3
    (tmp_path / "ddp").mkdir()
    ddp_recipe = tiny_recipe(tmp_path / "ddp", tiny_tokenizer_dir, colour_world, batch_size=1,
                             group_by_modality_length=False, epochs=1)
    order = epoch_batches([1] * len(records), has_image, 2, load_recipe(str(ddp_recipe)).seed, 0, False)[:steps]
    split = [(has_image[batch[0]], has_image[batch[1]]) for batch in order]
    assert any(a != b for a, b in split), f"seed gives no step with a text-only rank: {split}"

    script = tmp_path / "train_and_dump.py"
    script.write_text(RANK_WEIGHTS)
    stage_args = ["--stage", "align", "--data", str(data), "--image-folder", str(colour_world["images"]),
                  "--max-steps", str(steps), "--quiet"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                          str(script), "train", str(ddp_recipe), *stage_args, "--out", str(tmp_path / "ddp_run")],
                         capture_output=True, text=True, env=env, timeout=240)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "ddp_run/align/rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp_run/align/rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"

    # The same global batches on one process give the same losses (one mixed micro-batch per step).
    single_recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, batch_size=2,
                                group_by_modality_length=False, epochs=1)
    single = subprocess.run([sys.executable, "-m", "crystalvlm.cli", "train", str(single_recipe), *stage_args,
                             "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, env=env, timeout=180)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]

    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "align/metrics.jsonl").read_text().splitlines()]

    expected, got = losses(tmp_path / "single"), losses(tmp_path / "ddp_run")
    assert len(expected) == len(got) == steps
    for a, b in zip(expected, got):
        assert abs(a - b) <= 1e-4 * abs(a), (expected, got)
