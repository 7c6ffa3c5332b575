"""Tiny checkpoints in the original LLaVA layout, and the original arithmetic to check against.

`write_original_llava` writes what liuhaotian/LLaVA's `LlavaLlamaForCausalLM.save_pretrained`
writes: a Llama config with LLaVA's `mm_*` fields, weights `model.*`, `lm_head.weight`,
`model.mm_projector.*`, and a tokenizer without `<image>`; the CLIP tower lives in its own folder
named by `mm_vision_tower`. `OriginalLlava.logits` is LLaVA's forward written minimally: take
the tower's hidden states at `mm_vision_select_layer`, drop CLS for `patch`, project, and splice
the features into the token embeddings where the id is -200 (IMAGE_TOKEN_INDEX).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

IMAGE_TOKEN_INDEX = -200
WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(45)] + ["USER:", "ASSISTANT:", "a", "red", "square", "?"]


def write_tokenizer(folder: Path, words: list[str] = WORDS) -> None:
    """A word-level tokenizer with no `<image>` in its vocabulary (like Vicuna's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


def write_clip_tower(folder: Path, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                              image_size=28, patch_size=14, projection_dim=16)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def llava_fields(tower: Path, projector: str) -> dict:
    return {"mm_vision_tower": str(tower), "mm_projector_type": projector, "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch", "mm_hidden_size": 24, "image_aspect_ratio": "pad",
            "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tune_mm_mlp_adapter": False}


def make_projector(projector: str, vision: int, text: int) -> torch.nn.Module:
    if projector == "linear":
        return torch.nn.Linear(vision, text)
    return torch.nn.Sequential(torch.nn.Linear(vision, text), torch.nn.GELU(), torch.nn.Linear(text, text))


def write_original_llava(folder: Path, tower: Path, projector: str = "mlp2x_gelu", seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    llama_config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                               bos_token_id=1, eos_token_id=2)
    llama = LlamaForCausalLM(llama_config)
    head = make_projector(projector, 24, 32)
    state = {key: value.contiguous() for key, value in llama.state_dict().items()}
    state.update({f"model.mm_projector.{key}": value for key, value in head.state_dict().items()})
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = llama_config.to_dict()
    config.update(llava_fields(tower, projector), model_type="llava", architectures=["LlavaLlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder)
    return folder


class OriginalLlava:
    """LLaVA's arithmetic on a folder written by `write_original_llava` (or a CrystalChat-MLLM one)."""

    def __init__(self, folder: Path, language_model, base: str, embed):
        from safetensors.torch import load_file

        config = json.loads((folder / "config.json").read_text())
        self.config = config
        self.tower = CLIPVisionModel.from_pretrained(config["mm_vision_tower"]).eval()
        weights = load_file(folder / "model.safetensors")
        projector_state = {key[len(f"{base}.mm_projector."):]: value for key, value in weights.items()
                           if key.startswith(f"{base}.mm_projector.")}
        text = language_model.config.hidden_size if hasattr(language_model.config, "hidden_size") else None
        self.projector = make_projector(config["mm_projector_type"], config["mm_hidden_size"],
                                        text or projector_state[next(iter(projector_state))].shape[0])
        self.projector.load_state_dict(projector_state)
        self.language_model = language_model.eval()
        self.embed = embed

    @torch.no_grad()
    def logits(self, ids: list[int], pixel_values: torch.Tensor) -> torch.Tensor:
        """(1, T', V) for one prompt whose ids hold -200 once per image."""
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.config["mm_vision_select_layer"]]
        features = self.projector(hidden[:, 1:])  # (images, patches, text width): 'patch' drops CLS
        pieces, start, image = [], 0, 0
        for position, token in enumerate(ids + [IMAGE_TOKEN_INDEX]):
            if token == IMAGE_TOKEN_INDEX:
                pieces.append(self.embed(torch.tensor([ids[start:position]], dtype=torch.long)))
                if position < len(ids):
                    pieces.append(features[image:image + 1])
                    image += 1
                start = position + 1
        return self.language_model(inputs_embeds=torch.cat(pieces, dim=1)).logits


def expand_ids(ids: list[int], image_token_id: int, per_image: int) -> list[int]:
    """The same prompt as HF Llava reads it: `<image>` repeated once per feature."""
    out: list[int] = []
    for token in ids:
        out += [image_token_id] * per_image if token == IMAGE_TOKEN_INDEX else [token]
    return out
