"""Checkpoints carry the config fields and weight names vLLM's Llava loader reads, and every
shipped recipe's projector is one vLLM can run, or the recipe is known not to be servable there."""

from __future__ import annotations

import pytest
import yaml

from crystalvlm.models.serving_compat import checkpoint_vllm_problems, vllm_problems
from crystalvlm.train.recipe import read_recipe, shipped_recipes


def test_a_crystalvlm_checkpoint_has_the_layout_vllm_reads(tiny_checkpoint):
    assert checkpoint_vllm_problems(tiny_checkpoint) == []


def test_the_checker_names_what_vllm_would_refuse(tiny_checkpoint):
    import json

    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["projector_hidden_act"] = "linear"
    config["text_config"].pop("architectures")
    problems = vllm_problems(config, ["model.language_model.norm.weight", "model.mm_projector.0.weight"])
    assert any("'linear'" in problem for problem in problems)
    assert any("architectures" in problem for problem in problems)
    assert any("model.mm_projector.0.weight" in problem for problem in problems)


@pytest.mark.parametrize("name", shipped_recipes())
def test_each_shipped_recipe_projector_is_servable_by_vllm_or_known_not_to_be(name):
    projector = read_recipe(name)["model"].get("projector", "mlp2x_gelu")
    config = {"architectures": ["LlavaForConditionalGeneration"], "projector_hidden_act":
              {"mlp2x_gelu": "gelu", "linear": "linear"}[projector], "text_config": {"architectures": ["X"]},
              "vision_config": {"model_type": "clip_vision_model"}}
    problems = vllm_problems(config, [])
    # The web world's tiny recipe keeps its `linear` projector (docs/web-world-status.md); all others serve.
    assert (problems != []) == (name == "tiny-web"), problems


def test_a_built_pad_checkpoint_gives_plain_transformers_crystalvlms_pixels(tiny_tokenizer_dir, tmp_path):
    """The builder's processor for image_mode pad pads itself: AutoProcessor on the saved folder and
    crystalvlm's preprocessing agree exactly on a non-square image, and the padding is really there."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer

    from crystalvlm.data.images import preprocess
    from crystalvlm.models.build import ModelSpec, build_llava
    from crystalvlm.models.checkpoint import CheckpointInfo, load_processor, save_checkpoint
    from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config

    vocab = len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    spec = ModelSpec.from_dict({"vision": {"config": tiny_vision_config(32, 8, 32, 1)},
                                "llm": {"config": tiny_llm_config(vocab, 32, 1)}, "tokenizer": str(tiny_tokenizer_dir)})
    model, processor = build_llava(spec, image_mode="pad")
    folder = save_checkpoint(model, processor, tmp_path / "ckpt", CheckpointInfo(template="vicuna_v1", image_mode="pad"))
    image = Image.new("RGB", (64, 20), (250, 10, 10))  # wide: padded above and below
    plain = AutoProcessor.from_pretrained(folder).image_processor(images=[image], return_tensors="pt")["pixel_values"]
    loaded, _, info = load_processor(folder)
    ours = preprocess([image], loaded.image_processor, info.image_mode)
    assert plain.shape == (1, 3, 32, 32) and torch.equal(plain, ours)
    # Top rows are the mean-colour padding (about 0 after normalisation), the middle row the red image.
    assert plain[0, :, 0].abs().max() < 0.05 and plain[0, 0, 16].mean() > 1.0
