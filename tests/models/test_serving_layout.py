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
