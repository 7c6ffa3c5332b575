"""`crystalvlm convert`: checkpoints in their original layouts give the source's logits once converted.

Each source is written in its own layout (tests/models/*_fixture.py) and run with its own
arithmetic (LLaVA's -200 splice; CrystalCoder's remote code with its muP multipliers); the
converted folder is loaded by plain transformers. Tolerance: fp32 logits agree within 1e-4
absolute (their magnitude is ~1-10; the folds reorder float products).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessor

sys.path.insert(0, str(Path(__file__).parent))
from crystalcoder_fixture import write_crystalcoder  # noqa: E402
from original_llava_fixture import (IMAGE_TOKEN_INDEX, WORDS, OriginalLlava, expand_ids, llava_fields,  # noqa: E402
                                    write_clip_tower, write_original_llava, write_tokenizer)

from crystalvlm.cli import main  # noqa: E402
from crystalvlm.models.converters.crystalchat import convert_crystalchat  # noqa: E402
from crystalvlm.models.converters.llava import convert_llava  # noqa: E402
from crystalvlm.models.converters.original_layout import ConversionError  # noqa: E402
from crystalvlm.models.serving_compat import checkpoint_vllm_problems  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> Path:
    return write_clip_tower(tmp_path_factory.mktemp("clip"))


def _pixels(seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def _compare(original: OriginalLlava, converted: Path, ids: list[int]) -> None:
    model = AutoModelForImageTextToText.from_pretrained(converted, dtype=torch.float32).eval()
    pixels = _pixels()
    expected = original.logits(ids, pixels)
    expanded = expand_ids(ids, model.config.image_token_id, model.config.image_seq_length)
    with torch.no_grad():
        got = model(input_ids=torch.tensor([expanded]), pixel_values=pixels).logits
    vocabulary = expected.shape[-1]
    assert got.shape[1] == expected.shape[1]
    difference = (got[..., :vocabulary] - expected).abs().max().item()
    assert difference < ATOL, f"converted logits differ by {difference}"
    assert expected.abs().max().item() > 0.1  # a real comparison, not two near-zero tensors


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "linear"])
def test_original_llava_converts_to_equal_logits(tmp_path, tower, projector):
    source = write_original_llava(tmp_path / "llava-v1.5", tower, projector)
    out = tmp_path / "converted"
    assert main(["convert", "llava", str(source), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["projector_hidden_act"] == ("gelu" if projector == "mlp2x_gelu" else "linear")
    assert json.loads((out / "crystalvlm.json").read_text())["template"] == "vicuna_v1"
    problems = checkpoint_vllm_problems(out)  # vLLM reads it as it is, except that it lacks an identity activation
    assert problems == [] if projector == "mlp2x_gelu" else (len(problems) == 1 and "'linear'" in problems[0])
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32)  # loads model.* and lm_head, ignores mm_*
    original = OriginalLlava(source, llama, "model", llama.model.embed_tokens)
    _compare(original, out, [1, 49, 3, IMAGE_TOKEN_INDEX, 4, 5, 50])


def test_pad_mode_travels_in_the_saved_image_processor(tmp_path, tower):
    """Plain AutoProcessor gives LLaVA's expand2square pixels, the same crystalvlm preprocesses with."""
    from crystalvlm.data.images import expand_to_square, preprocess
    from crystalvlm.models.checkpoint import load_processor

    source = write_original_llava(tmp_path / "llava-v1.5", tower)
    out = convert_llava(source, tmp_path / "converted")
    image = Image.new("RGB", (40, 17), (200, 30, 60))
    image.paste((10, 220, 90), (5, 3, 30, 12))
    plain = AutoProcessor.from_pretrained(out).image_processor(images=[image], return_tensors="pt")["pixel_values"]
    processor, _, info = load_processor(out)
    ours = preprocess([image], processor.image_processor, info.image_mode)
    clip = CLIPImageProcessor.from_pretrained(tower)
    fill = tuple(int(channel * 255) for channel in clip.image_mean)  # LLaVA's expand2square background
    reference = clip(images=[expand_to_square(image, fill)], return_tensors="pt")["pixel_values"]
    assert info.image_mode == "pad"
    assert torch.equal(plain, ours)
    assert (plain - reference).abs().max().item() < 0.02  # same pad colour and geometry; resamplers round apart


def _write_crystalchat_mllm(folder: Path, llm: Path, tower: Path) -> Path:
    """CrystalChat-7B-MLLM's layout: CrystalCoder + LLaVA fields, `transformer.*` weights and projector."""
    folder.mkdir(parents=True)
    weights = load_file(llm / "model.safetensors")
    torch.manual_seed(5)
    head = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
    weights.update({f"transformer.mm_projector.{key}": value for key, value in head.state_dict().items()})
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((llm / "config.json").read_text())
    config.pop("auto_map")
    config.update(llava_fields(tower, "mlp2x_gelu"), model_type="llava_crystal",
                  architectures=["LlavaCrystalForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder, WORDS[:3] + [f"<|{name}|>" for name in ("sys_start", "sys_end", "im_start", "im_end")]
                    + WORDS[3:60])
    return folder


def test_crystalchat_mllm_converts_to_equal_logits_without_remote_code(tmp_path, tower):
    llm = write_crystalcoder(tmp_path / "crystalcoder")
    source = _write_crystalchat_mllm(tmp_path / "CrystalChat-7B-MLLM", llm, tower)
    out = tmp_path / "converted"
    assert main(["convert", "crystalchat", str(source), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["model_type"] == "stablelm" and "auto_map" not in config
    assert not list(out.glob("*.py"))  # nothing to run: loads without trust_remote_code
    assert json.loads((out / "crystalvlm.json").read_text())["template"] == "crystalchat"
    assert checkpoint_vllm_problems(out) == []  # StableLM text model, llava-hf weight names
    reference = AutoModelForCausalLM.from_pretrained(llm, trust_remote_code=True, dtype=torch.float32)
    original = OriginalLlava(source, reference, "transformer", reference.transformer.wte)
    _compare(original, out, [1, 4, 9, 7, IMAGE_TOKEN_INDEX, 6, 12, 13])


def test_wrong_source_kind_is_refused_and_nothing_written(tmp_path, tower):
    llava = write_original_llava(tmp_path / "llava-v1.5", tower)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"not a CrystalChat-MLLM .* use `crystalvlm convert llava`"):
        convert_crystalchat(llava, out)
    native = convert_llava(llava, tmp_path / "native")
    with pytest.raises(ConversionError, match="already a Hugging Face native Llava"):
        convert_llava(native, out)
    plain = tmp_path / "plain-llm"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConversionError, match="no mm_vision_tower"):
        convert_llava(plain, out)
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))


def test_missing_vision_tower_is_refused_and_nothing_written(tmp_path, tower, capsys):
    source = write_original_llava(tmp_path / "llava-v1.5", tower)
    config = json.loads((source / "config.json").read_text())
    config["mm_vision_tower"] = str(tmp_path / "no-such-clip")
    (source / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert main(["convert", "llava", str(source), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "vision tower" in error and "--vision-tower" in error
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))
    # Named explicitly, the same checkpoint converts.
    assert main(["convert", "llava", str(source), "--out", str(out), "--vision-tower", str(tower)]) == 0
