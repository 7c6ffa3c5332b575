"""The per-GPU memory estimate each stage prints, against figures computed by hand for
LLaVA-1.5-7B's finetune stage, and the refusal of a launch that cannot fit (with its fix)."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors import safe_open

from crystalvlm.train.memory_estimate import (GIB, LaunchPlan, LaunchWontFitError, ModelShape, check_launch,
                                              estimate_memory)

# LLaVA-1.5-7B finetune: Vicuna-7B (6,738,415,616) + MLP projector 1024->4096->4096 (20,979,712)
# train; CLIP ViT-L/14-336's vision tower (303,507,456) is frozen.
SEVEN_B = ModelShape(trainable=6_738_415_616 + 20_979_712, frozen=303_507_456, hidden_size=4096, layers=32,
                     vocab_size=32000)
H100 = 80 * GIB


def _plan(**changes) -> LaunchPlan:
    settings = dict(precision="bf16", sharding="none", world_size=1, batch_size=16, max_length=2048,
                    gradient_checkpointing=True)
    settings.update(changes)
    return LaunchPlan(**settings)


def test_ddp_figures_for_a_7b_finetune():
    estimate = estimate_memory(SEVEN_B, _plan())
    assert estimate.weights == 27_644_596_224  # 6,759,395,328 x 4 (fp32 master) + 303,507,456 x 2 (frozen bf16)
    assert estimate.gradients == 27_037_581_312  # 6,759,395,328 x 4
    assert estimate.optimizer == 54_075_162_624  # 6,759,395,328 x 8 (AdamW's two fp32 moments)
    # 32 saved layer inputs (32 x 32768 tokens x 4096 x 2 B) + one layer recomputed (32768 x 4096 x 17 x 2 B)
    assert estimate.activations == 8_589_934_592 + 4_563_402_752
    assert estimate.logits == 14_680_064_000  # 32768 tokens x 32000 x (2 + 12) B
    assert estimate.total == 138_738_225_152  # ~129.2 GiB: over any single GPU


def test_fsdp_figures_for_a_7b_finetune_on_eight_gpus():
    estimate = estimate_memory(SEVEN_B, _plan(sharding="fsdp", world_size=8))
    # 7,062,902,784 parameters x 4 B / 8, plus two gathered layers (ceil(7,062,902,784 / 32) x 2 B each)
    assert estimate.weights == 3_531_451_392 + 882_862_848
    assert estimate.gradients == 3_379_697_664
    assert estimate.optimizer == 6_759_395_328
    assert estimate.total == 44_534_292_224  # ~41.5 GiB: fits an 80 GiB GPU


def test_zero3_keeps_sixteen_bit_weights_and_the_master_copy_with_the_optimizer():
    estimate = estimate_memory(SEVEN_B, _plan(sharding="zero3", world_size=8))
    assert estimate.weights == 1_765_725_696 + 882_862_848  # 7,062,902,784 x 2 B / 8 + gathered layers
    assert estimate.optimizer == 10_139_092_992  # 6,759,395,328 x 12 B / 8


def test_a_launch_that_cannot_fit_is_refused_with_the_fix_named():
    with pytest.raises(LaunchWontFitError, match=r"finetune.*129\.2 GiB.*configs/accelerate/fsdp\.yaml"):
        check_launch(SEVEN_B, _plan(), H100, "finetune")
    with pytest.raises(LaunchWontFitError, match="gradient checkpointing"):
        check_launch(SEVEN_B, _plan(sharding="fsdp", world_size=8, gradient_checkpointing=False, batch_size=4),
                     40 * GIB, "finetune")
    assert check_launch(SEVEN_B, _plan(sharding="fsdp", world_size=8), H100, "finetune").total < H100
    assert check_launch(SEVEN_B, _plan(), None, "finetune").total > H100  # no GPU: printed, not refused


def test_the_trainer_prints_refuses_and_stores_frozen_parts_in_the_compute_dtype(
        colour_world, tiny_tokenizer_dir, tmp_path, monkeypatch, capsys):
    from tiny_fixtures import tiny_recipe

    from crystalvlm.cli import main
    from crystalvlm.train import memory_estimate, trainer

    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=1, precision="bf16")
    seen = {}
    original_loop = trainer.loop

    def loop_noting_dtypes(run, model, *args):
        inner = model.module if hasattr(model, "module") else model
        seen[run.stage.name] = {p.dtype for p in inner.model.vision_tower.parameters()}
        seen[run.stage.name + ":projector"] = {p.dtype for p in inner.model.multi_modal_projector.parameters()}
        return original_loop(run, model, *args)

    monkeypatch.setattr(trainer, "loop", loop_noting_dtypes)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--stage", "align", "--quiet"]) == 0
    import torch

    assert seen["align"] == {torch.bfloat16} and seen["align:projector"] == {torch.float32}
    assert "estimated memory per GPU (bf16" in capsys.readouterr().out
    assert json.loads((run / "align/memory_estimate.json").read_text())["estimate"]["total"] > 0
    final = run / "align/final"
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(final / "model.safetensors"), "pt") as weights:  # saved in the training dtype
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}

    # The same stage on a GPU too small for it: refused before training, with the fix, nothing written.
    monkeypatch.setattr(memory_estimate, "gpu_capacity", lambda accelerator: 1 * 2**20)
    assert main(["train", str(recipe), "--out", str(tmp_path / "small"), "--stage", "align", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "per GPU" in error and "fix:" in error
    assert not (tmp_path / "small/align/final").exists()
    # The recipe can switch the refusal off (samples far shorter than max_length): printed, then trained.
    assert main(["train", str(recipe), "--out", str(tmp_path / "small"), "--stage", "align", "--quiet",
                 "--set", "stages.align.memory_check=false"]) == 0
