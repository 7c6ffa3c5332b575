"""Compose converted parts into a Hugging Face native `LlavaForConditionalGeneration` folder.

Every converter ends here: the LLM's native config and tensors, the projector as HF's
`LlavaMultiModalProjector` names it, the vision tower (from its own checkpoint, or tensors found in
the source), the tokenizer with `<image>` added, and an image processor that carries the source's
preprocessing (`do_pad` for LLaVA's `pad`), so plain transformers, vLLM and lmms-eval see the
pixels the source model saw. The folder is written atomically by `save_checkpoint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PretrainedConfig

from crystalvlm.markers import IMAGE_TOKEN
from crystalvlm.models.build import (PartSpec, _vision_config, build_image_processor, extra_vision_tokens,
                                     image_token_count)
from crystalvlm.models.checkpoint import CheckpointInfo, ModelNotFoundError, resolve_model, save_checkpoint
from crystalvlm.models.converters.original_layout import ConversionError

# CLIPImageProcessor settings a LlavaImageProcessor takes over unchanged.
IMAGE_PROCESSOR_FIELDS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                          "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")


@dataclass
class ConvertedParts:
    text_config: PretrainedConfig
    text_weights: dict[str, torch.Tensor]  # as the native *ForCausalLM names them: model.*, lm_head.weight
    projector: dict[str, torch.Tensor]  # linear_1.*, linear_2.*
    projector_activation: str
    vision_tower: str  # a folder or a Hub id (in the HF cache) holding the tower's config (and weights)
    vision_weights: dict[str, torch.Tensor]  # tower tensors found in the source (CLIPVisionModel names), or {}
    vision_feature_layer: int
    vision_feature_strategy: str
    tokenizer_folder: Path
    image_mode: str
    template: str | None  # the crystalvlm template name recorded in the sidecar
    chat_template: str | None = None  # its Jinja form for the processor (the caller renders it)


def resolve_vision_tower(name: str) -> Path:
    try:
        return resolve_model(name)
    except ModelNotFoundError as error:
        raise ConversionError(f"vision tower {name!r} not found ({error}); pass --vision-tower PATH "
                              f"(a CLIP checkpoint folder) or download it first") from None


def llava_image_processor(tower: Path, vision_config: PretrainedConfig, image_mode: str):
    """The tower's own preprocessing as a LlavaImageProcessor; `do_pad` carries LLaVA's `pad`."""
    from transformers import LlavaImageProcessor

    settings_file = tower / "preprocessor_config.json"
    if settings_file.is_file():
        raw: dict[str, Any] = json.loads(settings_file.read_text())
        settings = {key: raw[key] for key in IMAGE_PROCESSOR_FIELDS if key in raw}
    else:
        settings = build_image_processor(vision_config, {}).to_dict()
        settings = {key: settings[key] for key in IMAGE_PROCESSOR_FIELDS if key in settings}
    if image_mode == "square":
        side = vision_config.image_size
        settings.update(size={"height": side, "width": side}, do_center_crop=False)
    return LlavaImageProcessor(**settings, do_pad=image_mode == "pad")


def load_tokenizer(folder: Path):
    """The source's tokenizer without running its code: AutoTokenizer, else its tokenizer.json."""
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (ValueError, OSError, KeyError) as error:
        if not (folder / "tokenizer.json").is_file():
            raise ConversionError(f"{folder}: cannot load its tokenizer ({error})") from None
        from transformers import PreTrainedTokenizerFast

        settings = json.loads((folder / "tokenizer_config.json").read_text()) if (
            folder / "tokenizer_config.json").is_file() else {}
        special = {key: settings[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token")
                   if isinstance(settings.get(key), str)}
        return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **special)


def write_native_llava(parts: ConvertedParts, out: Path, source: Path, kind: str) -> Path:
    """Compose the parts, check every tensor found a place, and write `out` atomically."""
    tower_folder = resolve_vision_tower(parts.vision_tower)
    vision_config = _vision_config(PartSpec(pretrained=str(tower_folder)))
    tokenizer = load_tokenizer(parts.tokenizer_folder)
    original_vocab = parts.text_weights["model.embed_tokens.weight"].shape[0]
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": tokenizer.unk_token or "<pad>"})

    config = LlavaConfig(
        vision_config=vision_config, text_config=parts.text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_token_count(vision_config, parts.vision_feature_strategy),
        projector_hidden_act=parts.projector_activation,
        vision_feature_layer=parts.vision_feature_layer,
        vision_feature_select_strategy=parts.vision_feature_strategy,
    )
    config.pad_token_id = tokenizer.pad_token_id
    dtype = parts.text_weights["lm_head.weight"].dtype  # built in the source's precision: a 7B fits twice in memory
    model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    state = {"lm_head.weight": parts.text_weights["lm_head.weight"]}
    state.update({"model.language_model." + key[len("model."):]: value
                  for key, value in parts.text_weights.items() if key.startswith("model.")})
    state.update({"model.multi_modal_projector." + key: value for key, value in parts.projector.items()})
    vision = parts.vision_weights or _tower_weights(tower_folder)
    state.update({"model.vision_tower." + key: value for key, value in vision.items()})
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ConversionError(f"{source}: converted {kind} weights do not fit the native Llava model; "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=True)
    if len(tokenizer) > original_vocab:
        # New rows (<image>, a pad) are drawn around the old rows' mean (transformers' mean_resizing);
        # <image> positions are replaced by image features, so no logit of the source changes.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = True

    processor = LlavaProcessor(
        image_processor=llava_image_processor(tower_folder, vision_config, parts.image_mode), tokenizer=tokenizer,
        patch_size=vision_config.patch_size, vision_feature_select_strategy=parts.vision_feature_strategy,
        image_token=IMAGE_TOKEN, num_additional_image_tokens=extra_vision_tokens(vision_config),
        chat_template=parts.chat_template,
    )
    return save_checkpoint(model, processor, out, CheckpointInfo(template=parts.template, image_mode=parts.image_mode,
                                                                  stage=f"convert:{kind}"))


def _tower_weights(tower: Path) -> dict[str, torch.Tensor]:
    """The vision tower's tensors from its own checkpoint (a full CLIP model or CLIPVisionModel)."""
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(tower)
    inner = getattr(loaded, "vision_model", None)
    if inner is not None:
        return {"vision_model." + key: value for key, value in inner.state_dict().items()}
    return dict(loaded.state_dict())
