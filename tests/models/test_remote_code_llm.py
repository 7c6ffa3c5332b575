"""A remote-code LLM (a tiny CrystalCoder, loaded as LLM360/CrystalChat is, with trust_remote_code)
composes end to end: the builder folds it onto its native class with equal logits, both stages
train, the final checkpoint reloads with plain transformers (no remote code) and generates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from crystalcoder_fixture import write_crystalcoder  # noqa: E402

from crystalvlm.cli import main  # noqa: E402
from crystalvlm.models.build import ModelSpec, build_llava  # noqa: E402
from crystalvlm.worlds.parts.tiny import tiny_vision_config  # noqa: E402


@pytest.fixture(scope="module")
def crystalcoder(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    vocab = len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir)) + 8
    return write_crystalcoder(tmp_path_factory.mktemp("crystalcoder"), vocab_size=vocab)


def _model_section(llm: Path, tokenizer: Path, trust_remote_code: bool = True) -> dict:
    return {"vision": {"config": tiny_vision_config(image_size=32, patch_size=8, hidden=32, layers=2)},
            "llm": {"pretrained": str(llm), "trust_remote_code": trust_remote_code},
            "tokenizer": str(tokenizer), "projector": "mlp2x_gelu"}


def test_the_builder_folds_crystalcoder_with_equal_logits(crystalcoder, tiny_tokenizer_dir):
    model, _ = build_llava(ModelSpec.from_dict(_model_section(crystalcoder, tiny_tokenizer_dir)))
    assert model.config.text_config.model_type == "stablelm"
    reference = AutoModelForCausalLM.from_pretrained(crystalcoder, trust_remote_code=True, dtype=torch.float32).eval()
    shared = min(reference.config.vocab_size, model.config.text_config.vocab_size)  # the builder fits the tokenizer
    ids = torch.randint(0, shared, (2, 17), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        expected = reference(input_ids=ids).logits[..., :shared]
        got = model(input_ids=ids).logits[..., :shared]
    assert (got - expected).abs().max().item() < 1e-4 and expected.abs().max().item() > 0.1


def test_remote_code_runs_only_where_the_recipe_says_so(crystalcoder, tiny_tokenizer_dir):
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_llava(ModelSpec.from_dict(_model_section(crystalcoder, tiny_tokenizer_dir, trust_remote_code=False)))


def test_crystalcoder_trains_both_stages_reloads_and_generates(crystalcoder, tiny_tokenizer_dir, colour_world,
                                                                 tmp_path):
    common = {"max_steps": 2, "batch_size": 4, "max_length": 256, "warmup_ratio": 0.0}
    recipe = {
        "name": "tiny-crystalchat", "seed": 3, "image_mode": "pad",
        "model": _model_section(crystalcoder, tiny_tokenizer_dir),
        "datasets": {"captions": {"file": str(colour_world["captions"]), "image_folder": str(colour_world["images"])},
                     "qa": {"file": str(colour_world["qa"]), "image_folder": str(colour_world["images"])}},
        "stages": {
            "align": {"template": "plain", "data": ["captions"], "tunable": ["projector"], "lr": {"projector": 1e-3},
                      **common},
            "finetune": {"template": "crystalchat", "data": ["qa"], "tunable": ["projector", "llm"],
                         "lr": {"projector": 1e-4, "llm": 1e-4}, **common},
        },
    }
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["train", str(recipe_file), "--out", str(run), "--quiet"]) == 0
    final = run / "finetune" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["text_config"]["model_type"] == "stablelm" and not list(final.glob("*.py"))
    assert json.loads((final / "crystalvlm.json").read_text())["template"] == "crystalchat"
    # Stage 2 started from stage 1's saved checkpoint; plain transformers reloads the final one.
    model = AutoModelForImageTextToText.from_pretrained(final)
    assert model.config.text_config.model_type == "stablelm"
    image = colour_world["images"] / "img000.png"
    assert main(["generate", str(final), "--image", str(image), "--prompt", "What colour is the square?",
                 "--max-new-tokens", "4"]) == 0
