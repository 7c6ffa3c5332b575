"""`--set` is checked against the recipe schema, not against the keys the YAML happens to hold."""

from __future__ import annotations

import pytest

from crystalvlm.train.recipe import RecipeError, apply_overrides, load_recipe, read_recipe


@pytest.fixture
def tiny():
    return read_recipe("tiny")


def test_a_field_the_schema_knows_is_created_when_the_yaml_lacks_it(tiny):
    assert "save_every" not in tiny["stages"]["align"] and "vision" not in tiny["stages"]["align"]["lr"]
    raw = apply_overrides(tiny, ["stages.align.save_every=5", "stages.align.lr.vision=1e-5", "model.tokenizer=/tok"])
    assert raw["stages"]["align"]["save_every"] == 5
    assert raw["stages"]["align"]["lr"]["vision"] == pytest.approx(1e-5)  # YAML's "1e-5" string read as a number
    assert raw["model"]["tokenizer"] == "/tok"
    assert "save_every" not in tiny["stages"]["align"]  # the input is not modified


@pytest.mark.parametrize("override,words", [
    ("foo=bar", ["unknown key 'foo'", "stages"]),
    ("stages.align.batchsize=8", ["unknown key 'batchsize'", "batch_size"]),
    ("stages.align.batch_size=many", ["expects int", "many"]),
    ("stages.align.lr.brain=0.1", ["unknown key 'brain'", "projector"]),
    ("stages.pretrain.epochs=1", ["no stage 'pretrain'", "align, finetune"]),
    ("model.vision.bogus=1", ["unknown key 'bogus'", "pretrained"]),
    ("prepare.n_trian=5", ["no 'n_trian' in prepare", "n_train"]),  # a world's own keys must exist
    ("seed=0.5", ["expects int"]),
    ("seed", ["expects key=value"]),
    ("stages.align.warmup_ratio=[1", ["not valid YAML"]),
])
def test_a_typo_or_a_wrong_value_is_refused_at_once_naming_the_known_keys(tiny, override, words):
    with pytest.raises(RecipeError) as error:
        apply_overrides(tiny, [override])
    for word in words:
        assert word in str(error.value)


def test_overrides_reach_the_loaded_recipe():
    recipe = load_recipe("tiny", ["stages.finetune.batch_size=4", "seed=7"], {"world": "/w", "run_dir": "/r"})
    assert recipe.stage("finetune").batch_size == 4 and recipe.seed == 7
    assert recipe.datasets["captions"]["file"] == "/w/align.json"


def test_unknown_and_unreadable_recipes_are_refused_clearly(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*tiny"):
        read_recipe("nope")
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="is not a recipe"):
        read_recipe(str(not_a_mapping))
