"""The `linear` projector: stored as HF's two-layer projector with no activation, and started as the
single linear map LLaVA builds (first layer initialised like torch.nn.Linear, second the identity)."""

from __future__ import annotations

import math

import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from crystalvlm.models.build import ModelSpec, PartSpec, build_llava
from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config


def _build(tokenizer_dir, projector: str):
    torch.manual_seed(0)
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    spec = ModelSpec(vision=PartSpec(config=tiny_vision_config(32, 8, 48, 1)), llm=PartSpec(config=tiny_llm_config(vocab, 64, 1)),
                     tokenizer=str(tokenizer_dir), projector=projector)
    return build_llava(spec)


def test_a_linear_projector_starts_as_its_first_layer_alone(tiny_tokenizer_dir, tmp_path):
    model, processor = _build(tiny_tokenizer_dir, "linear")
    projector = model.model.multi_modal_projector
    features = torch.randn(2, 16, 48)  # (B, patches, vision width)
    assert torch.equal(projector(features), projector.linear_1(features))  # linear_2 is the identity
    bound = 1 / math.sqrt(48)  # torch.nn.Linear's uniform bound for 48 inputs, not HF's std 0.02
    weight = projector.linear_1.weight
    assert weight.abs().max() <= bound and weight.std() > 2 * 0.02
    # Still a plain transformers checkpoint: it saves and loads with the same outputs.
    model.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.projector_hidden_act == "linear"
    assert torch.equal(loaded.model.multi_modal_projector(features), projector(features))


def test_the_mlp_projector_keeps_the_librarys_initialisation(tiny_tokenizer_dir):
    model, _ = _build(tiny_tokenizer_dir, "mlp2x_gelu")
    second = model.model.multi_modal_projector.linear_2.weight
    assert not torch.equal(second, torch.eye(64)) and abs(second.std().item() - 0.02) < 0.005
