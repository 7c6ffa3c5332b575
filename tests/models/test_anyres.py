"""anyres (LLaVA-NeXT): a tiny LlavaNext composed, saved and loaded by plain transformers; its image-token
counts agree with LlavaNextProcessor's own expansion for many aspect ratios; greedy HF `generate`
equals the engine (and `crystalvlm generate`) token for token on a 3:1 image; a recipe trains it; bad
input is refused naming the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tiny_fixtures import tiny_recipe
from crystalvlm.data.dataset import DataSource, prepare_dataset
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import Turn, get_template
from crystalvlm.models.build import ModelSpec, PartSpec, build_llava
from crystalvlm.models.checkpoint import CheckpointInfo, load_processor, save_checkpoint

SIDE = 32  # the tiny tower's input side: sub-images are 32 x 32
GRID = [[32, 64], [64, 32], [64, 64]]  # 1x2, 2x1 and 2x2 sub-images
QUESTION = "<image>\nWhat colour is the square?"


def _spec(tokenizer_dir: Path, pinpoints=GRID) -> ModelSpec:
    from transformers import AutoTokenizer

    from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    return ModelSpec(vision=PartSpec(config=tiny_vision_config(SIDE, 8, 32, 2)),
                     llm=PartSpec(config=tiny_llm_config(vocab + 8, 64, 2)),
                     tokenizer=str(tokenizer_dir), image_grid_pinpoints=pinpoints)


@pytest.fixture(scope="module")
def anyres_checkpoint(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    torch.manual_seed(11)
    model, processor = build_llava(_spec(tiny_tokenizer_dir), chat_template=get_template("vicuna_v1").chat_template_jinja(),
                                   image_mode="anyres")
    folder = tmp_path_factory.mktemp("anyres") / "checkpoint"
    save_checkpoint(model, processor, folder, CheckpointInfo(template="vicuna_v1", image_mode="anyres"))
    return folder


def _scene(width: int, height: int) -> Image.Image:
    """A non-uniform image (a small red square on green), so sub-images differ."""
    image = Image.new("RGB", (width, height), (20, 160, 40))
    image.paste((210, 20, 20), (width * 3 // 4, height // 4, width * 3 // 4 + max(2, width // 10), height // 4 + max(2, height // 5)))
    return image


def test_plain_transformers_loads_a_llava_next(anyres_checkpoint):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(anyres_checkpoint)
    processor = AutoProcessor.from_pretrained(anyres_checkpoint)
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    assert type(processor).__name__ == "LlavaNextProcessor"
    assert model.config.image_grid_pinpoints == GRID
    assert processor.image_processor.image_grid_pinpoints == GRID


@pytest.mark.parametrize("width,height", [(40, 40), (96, 32), (32, 96), (80, 60), (60, 80), (128, 64), (50, 130), (300, 100)])
def test_token_counts_match_the_llava_next_processor(anyres_checkpoint, width, height):
    """Our expansion of `<image>` (training and prompts) equals LlavaNextProcessor's for 1:1, 3:1, 1:3,
    4:3, 3:4, 2:1 ... images, and so do the pixel values and sizes."""
    processor, config, info = load_processor(anyres_checkpoint)
    encoder = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), info.image_mode)
    image = _scene(width, height)
    ids, pixels, sizes = encoder.prompt_inputs([Turn("user", QUESTION)], [image])
    theirs = processor(images=[image], text="<image>\nWhat colour is the square?", return_tensors="pt")
    image_id = config.image_token_id
    ours_count = sum(1 for token in ids if token == image_id)
    assert ours_count == int((theirs["input_ids"] == image_id).sum())
    assert encoder.image_tokens([(width, height)]) == [ours_count]
    assert torch.equal(pixels, theirs["pixel_values"]) and sizes.tolist() == [[height, width]]
    # Training ids use the same count.
    train_ids, labels = encoder.encode([Turn("user", QUESTION), Turn("assistant", "Red")], [(width, height)])
    assert sum(1 for token in train_ids if token == image_id) == ours_count
    assert all(label < 0 for token, label in zip(train_ids, labels) if token == image_id)


def test_hf_generate_equals_the_engine_and_the_cli_on_a_3_to_1_image(anyres_checkpoint, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from crystalvlm.cli import main
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest

    image = _scene(96, 32)
    model = AutoModelForImageTextToText.from_pretrained(anyres_checkpoint)
    processor = AutoProcessor.from_pretrained(anyres_checkpoint)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=text, return_tensors="pt")
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=10)[0, inputs["input_ids"].shape[1]:].tolist()

    engine = GenerationEngine.from_checkpoint(anyres_checkpoint, batch_size=4)
    request = GenerationRequest([Turn("user", QUESTION)], [image])
    assert engine.prepare(request).input_ids == inputs["input_ids"][0].tolist()
    greedy = DecodingConfig.parse("greedy:max_new_tokens=10")
    alone = engine.generate([request], greedy)[0]
    assert alone.token_ids[: len(expected)] == expected
    # In a batch with another request about the same image (a shared prefix) and one about a 1:2 image.
    others = [GenerationRequest([Turn("user", "<image>\nIs it a square?")], [image]),
              GenerationRequest([Turn("user", QUESTION)], [_scene(40, 80)])]
    from crystalvlm.infer.shared_prefix import plan_shared_prefill

    prepared = [engine.prepare(r) for r in (request, *others)]
    assert plan_shared_prefill(prepared, engine.image_token_id, engine.pad_token_id) is not None, "no prefix shared"
    batched = engine.generate([request, *others], greedy)
    assert batched[0].token_ids == alone.token_ids
    assert [r.token_ids for r in batched[1:]] == [engine.generate([r], greedy)[0].token_ids for r in others]

    image_file = tmp_path / "wide.png"
    image.save(image_file)
    assert main(["generate", str(anyres_checkpoint), "--image", str(image_file), "--prompt", "What colour is the square?",
                 "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.strip() == alone.text.strip()


@pytest.mark.parametrize("strategy", ["opera:max_new_tokens=3", "vcd:max_new_tokens=3"])
def test_opera_and_vcd_run_on_anyres_images(anyres_checkpoint, strategy):
    """A batch of different-sized images: each answer equals the request's own answer alone."""
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest

    engine = GenerationEngine.from_checkpoint(anyres_checkpoint, batch_size=2)
    requests = [GenerationRequest([Turn("user", QUESTION)], [_scene(96, 32)]),
                GenerationRequest([Turn("user", QUESTION)], [_scene(40, 40)])]
    config = DecodingConfig.parse(strategy)
    together = engine.generate(requests, config)
    assert [len(r.token_ids) for r in together] == [3, 3]
    assert [r.token_ids for r in together] == [engine.generate([r], config)[0].token_ids for r in requests]


def _world_with_bad_records(colour_world, tmp_path: Path) -> Path:
    wide = tmp_path / "images"
    wide.mkdir()
    _scene(96, 32).save(wide / "wide.png")
    _scene(2000, 4).save(wide / "sliver.png")  # 500:1 — no feature row survives the grid
    records = [
        {"id": "good", "image": "wide.png", "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "Red"}]},
        {"id": "sliver", "image": "sliver.png", "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "Red"}]},
        {"id": "two-tags", "image": "wide.png", "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhat colour?"}, {"from": "gpt", "value": "Red"}]},
        {"id": "no-tag", "image": "wide.png", "conversations": [
            {"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Red"}]},
    ]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    return path


def test_bad_anyres_records_are_named_and_skipped(anyres_checkpoint, colour_world, tmp_path):
    processor, config, info = load_processor(anyres_checkpoint)
    encoder = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), info.image_mode, max_length=400)
    records = _world_with_bad_records(colour_world, tmp_path)
    prepared = prepare_dataset([DataSource(records, tmp_path / "images")], encoder)
    assert [item.record.record_id for item in prepared.items] == ["good"]
    reasons = {problem.record_id: problem.reason for problem in prepared.problems}
    assert set(reasons) == {"sliver", "two-tags", "no-tag"}
    assert "too elongated for the grid" in reasons["sliver"] and "sliver.png" in reasons["sliver"]
    assert "2 <image> placeholder(s) in the conversation for 1 image(s)" in reasons["two-tags"]
    assert "0 <image> placeholder(s) in the conversation for 1 image(s)" in reasons["no-tag"]
    # Too many image tokens for max_length: the count of image tokens is named.
    short = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), "anyres", max_length=40)
    too_long = prepare_dataset([DataSource(records, tmp_path / "images")], short)
    assert any(p.record_id == "good" and "image tokens" in p.reason and "over max_length 40" in p.reason
               for p in too_long.problems)


def test_a_layout_the_checkpoint_was_not_trained_with_is_refused(anyres_checkpoint, tiny_checkpoint):
    processor, config, _ = load_processor(anyres_checkpoint)
    template = get_template("vicuna_v1")
    with pytest.raises(ValueError, match="use image_mode anyres"):
        SampleEncoder.from_processor(processor, config, template, "pad")
    processor.image_processor.image_grid_pinpoints = [[32, 96], [96, 32]]
    with pytest.raises(ValueError, match="sub-image layouts must match"):
        SampleEncoder.from_processor(processor, config, template, "anyres")
    llava_processor, llava_config, _ = load_processor(tiny_checkpoint)
    with pytest.raises(ValueError, match="not trained with sub-images"):
        SampleEncoder.from_processor(llava_processor, llava_config, template, "anyres")
    with pytest.raises(ValueError, match="multiples of the vision tower's side"):
        build_llava(ModelSpec(vision=PartSpec(config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                                                     "num_hidden_layers": 1, "num_attention_heads": 2}),
                              llm=PartSpec(config={"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
                                                   "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}),
                              tokenizer=str(Path(llava_processor.tokenizer.name_or_path)), image_grid_pinpoints=[[48, 64]]),
                    image_mode="anyres")


def test_an_anyres_recipe_trains_and_saves_a_llava_next(colour_world, tiny_tokenizer_dir, tmp_path):
    from transformers import AutoConfig

    from crystalvlm.train.recipe import load_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe

    path = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=2)
    raw = yaml.safe_load(path.read_text())
    raw["image_mode"] = "anyres"
    raw["model"]["image_grid_pinpoints"] = GRID
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    train_recipe(load_recipe(str(path)), TrainOptions(run_dir=tmp_path / "run", progress=False))
    final = tmp_path / "run" / "finetune" / "final"
    assert AutoConfig.from_pretrained(final).architectures == ["LlavaNextForConditionalGeneration"]
    freeze = json.loads((tmp_path / "run" / "align" / "freeze_summary.json").read_text())
    assert "projector" in json.dumps(freeze)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "finetune" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses and all(loss == loss and loss > 0 for loss in losses)

    # Continuing from that checkpoint on another grid is refused before any step.
    raw["model"]["image_grid_pinpoints"] = [[32, 96], [96, 32]]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ValueError, match="keeps the sub-image layout it was trained with"):
        train_recipe(load_recipe(str(path)), TrainOptions(run_dir=tmp_path / "again", progress=False, stages=["finetune"],
                                                          init_from=str(final)))


# ---------------------------------------------------------------- SPHINX-X skip tokens
SQUARE_GRID = [[64, 64], [96, 96]]  # square layouts only: elongated images leave whole sub-images of padding


def _noise(width: int, height: int) -> Image.Image:
    generator = torch.Generator().manual_seed(width * 1000 + height)
    pixels = (torch.rand((height, width, 3), generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


@pytest.mark.parametrize("width,height", [(96, 24), (24, 96), (96, 40), (200, 30)])
def test_padded_subimages_are_the_processors_padding(tiny_tokenizer_dir, width, height):
    """subimage_grid's geometry marks exactly the sub-images the LlavaNext processor fills with padding."""
    from crystalvlm.subimage_grid import padded_subimages

    _, processor = build_llava(_spec(tiny_tokenizer_dir, SQUARE_GRID), image_mode="anyres")
    pixels = processor.image_processor(images=[_noise(width, height)], return_tensors="pt")["pixel_values"][0, 1:]
    constant = [bool((sub.flatten(1).std(1) == 0).all()) for sub in pixels]  # noise is never constant
    assert padded_subimages(height, width, SQUARE_GRID, SIDE) == constant


def test_skip_tokens_count_encode_save_and_load(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest
    from crystalvlm.models.checkpoint import load_checkpoint

    torch.manual_seed(5)
    spec = _spec(tiny_tokenizer_dir, SQUARE_GRID)
    spec.skip_padded_subimages = True
    model, processor = build_llava(spec, chat_template=get_template("vicuna_v1").chat_template_jinja(), image_mode="anyres")
    encoder = SampleEncoder.from_processor(processor, model.config, get_template("vicuna_v1"), "anyres")
    image = _noise(96, 24)  # fitted into 96 x 96: the top and bottom rows of sub-images are padding (6 of 9)
    ids, pixels, sizes = encoder.prompt_inputs([Turn("user", QUESTION)], [image])
    native = processor(images=[image], text="<image>\nhi", return_tensors="pt")
    image_id = model.config.image_token_id
    assert sum(1 for t in ids if t == image_id) == int((native["input_ids"] == image_id).sum()) + 6

    encoded = []
    hook = model.model.vision_tower.register_forward_hook(lambda _m, args, _o: encoded.append(args[0].shape[0]))
    logits = model(input_ids=torch.tensor([ids]), pixel_values=pixels, image_sizes=sizes).logits
    hook.remove()
    assert encoded == [1 + 3] and torch.isfinite(logits).all()  # the whole view and the middle row only

    folder = tmp_path / "skip"
    save_checkpoint(model, processor, folder, CheckpointInfo(template="vicuna_v1", image_mode="anyres"))
    assert (folder / "skip_tokens.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["crystalvlm_skip_padded_subimages"] is True
    restored, _, _ = load_checkpoint(folder)
    assert torch.equal(restored.model.skip_embedding, model.model.skip_embedding)
    again = restored(input_ids=torch.tensor([ids]), pixel_values=pixels, image_sizes=sizes).logits
    assert torch.allclose(again, logits, atol=1e-5)
    plain = AutoModelForImageTextToText.from_pretrained(folder)  # plain transformers: the native LlavaNext
    assert type(plain).__name__ == "LlavaNextForConditionalGeneration" and not hasattr(plain.model, "skip_embedding")
    assert torch.isfinite(plain(**native).logits).all()
    engine = GenerationEngine.from_checkpoint(folder)
    assert len(engine.generate([GenerationRequest([Turn("user", QUESTION)], [image])],
                               DecodingConfig.parse("greedy:max_new_tokens=3"))[0].token_ids) == 3


# ---------------------------------------------------------------- the server, eval and data show on anyres
def test_server_answers_an_anyres_request_as_the_engine(anyres_checkpoint):
    import base64
    import io

    from fastapi.testclient import TestClient

    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest
    from crystalvlm.infer.server import build_app

    engine = GenerationEngine.from_checkpoint(anyres_checkpoint, batch_size=4)
    image = _scene(96, 32)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = {"model": "anyres", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What colour is the square?"}]}]}
    with TestClient(build_app(engine, "anyres"), base_url="http://localhost") as http:
        reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    expected = engine.generate([GenerationRequest([Turn("user", QUESTION)], [image])], DecodingConfig.parse("greedy:max_new_tokens=5"))[0]
    assert reply.json()["choices"][0]["message"]["content"] == expected.text
    assert reply.json()["usage"]["prompt_tokens"] == expected.prompt_tokens


def test_eval_and_data_show_count_anyres_tokens(anyres_checkpoint, tmp_path):
    from crystalvlm.data.records import load_records
    from crystalvlm.data.show import show_record
    from crystalvlm.eval.runner import evaluate
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine
    from crystalvlm.worlds.registry import get_world

    world = get_world("shapes_hires")
    world.prepare(tmp_path / "world", {"world": "shapes_hires", "n_train": 4, "n_eval": 4, "clip_steps": 1,
                                             "vision": {"image_size": 32, "patch_size": 8, "hidden": 32, "layers": 1}}, seed=1, progress=False)
    engine = GenerationEngine.from_checkpoint(anyres_checkpoint, batch_size=4)
    results = evaluate(engine, world.tasks(tmp_path / "world", {}), tmp_path / "eval", DecodingConfig.parse("greedy"),
                       "anyres", progress=False)
    assert set(results) == {"textvqa_detail", "textvqa_coarse"}
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in results.values())

    processor, config, info = load_processor(anyres_checkpoint)
    encoder = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), info.image_mode)
    record = load_records(tmp_path / "world" / "finetune.json").records[0]
    shown = show_record(record, tmp_path / "world" / "images", encoder)
    image = Image.open(tmp_path / "world" / "images" / record.images[0])
    native = processor(images=[image.convert("RGB")], text="<image>", return_tensors="pt")
    assert sum(1 for t in shown.input_ids if t == config.image_token_id) == int((native["input_ids"] == config.image_token_id).sum())
    with pytest.raises(ValueError, match="give the image folder"):
        show_record(record, None, encoder)
