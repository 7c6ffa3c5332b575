"""Compose a vision tower and a causal LM into a `transformers` LlavaForConditionalGeneration.

Nothing here writes a Llava model of its own: the result is the library's class, saved and loaded
by plain `transformers`. The builder only chooses parts, copies pretrained weights into them, adds
the image token to the tokenizer, and assembles a LlavaProcessor whose image-token count matches
the model.

Projectors. `mlp2x_gelu` is LLaVA-1.5's Linear-GELU-Linear, which is exactly HF's
LlavaMultiModalProjector. `linear` is expressed natively too: the same two Linear layers with the
identity activation compose to one linear map of the same rank (min(vision, text) width), so a
checkpoint with a linear projector still loads with no crystalvlm code. It also starts as one map:
the first layer initialised like LLaVA's `nn.Linear`, the second (text width square) as the
identity (`start_as_one_linear_map`).

anyres (image_mode `anyres`, LLaVA-NeXT). The composed model is HF's LlavaNextForConditionalGeneration
and the processor a LlavaNextProcessor over a LlavaNextImageProcessor: the image is resized into the
best of the grid pinpoints (`image_grid_pinpoints`, (height, width) in pixels, multiples of the
tower's side), padded, cut into tower-sized sub-images, and a downscaled whole view comes first;
the model packs the sub-images' features with `spatial_unpad` (padding rows/columns dropped) and an
`image_newline` embedding closing each row. So one image becomes a number of tokens that depends on
its size; `LlavaNextProcessor` states the count and data/image_tokens.py asks it.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    PretrainedConfig,
    SiglipVisionConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from crystalvlm.markers import IMAGE_TOKEN
from crystalvlm.models.converters import crystalcoder

PROJECTOR_ACTIVATION = {"mlp2x_gelu": "gelu", "linear": "linear"}
VISION_CONFIG_CLASSES = {"clip_vision_model": CLIPVisionConfig, "siglip_vision_model": SiglipVisionConfig}
FEATURE_SELECT = ("default", "full")  # default drops the CLS token, as LLaVA does


@dataclass
class PartSpec:
    """A model part: either `config` (a dict of HF config fields incl. model_type) or `pretrained`."""

    config: dict[str, Any] | None = None
    pretrained: str | None = None
    trust_remote_code: bool = False
    # A Hub commit (or tag/branch) for every file of this part. With trust_remote_code the part's
    # Python code runs here, so a pinned commit keeps a later push to the repository from
    # changing what runs.
    revision: str | None = None

    def __post_init__(self) -> None:
        if (self.config is None) == (self.pretrained is None):
            raise ValueError("a model part needs exactly one of 'config' or 'pretrained'")
        if self.revision is not None and self.pretrained is None:
            raise ValueError("'revision' pins a pretrained part; this part is built from a config")

    @property
    def load_options(self) -> dict[str, Any]:
        """The keyword arguments every from_pretrained of this part gets."""
        return {"trust_remote_code": self.trust_remote_code, "revision": self.revision}


@dataclass
class ModelSpec:
    vision: PartSpec
    llm: PartSpec
    tokenizer: str | None = None  # defaults to the LLM's pretrained path
    projector: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    image_processor: dict[str, Any] = field(default_factory=dict)  # overrides (size, mean, std)
    # anyres only: the (height, width) resolutions in pixels an image may be tiled into; None: the
    # tower's side S times [1x2, 2x1, 2x2, 1x3, 3x1] sub-images (LLaVA-NeXT's default grid)
    image_grid_pinpoints: list[list[int]] | None = None
    # anyres only: SPHINX-X's skip token for sub-images that are all padding (models/skip_tokens.py)
    skip_padded_subimages: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelSpec":
        known = {"vision", "llm", "tokenizer", "projector", "vision_feature_layer",
                 "vision_feature_select_strategy", "image_processor", "image_grid_pinpoints",
                 "skip_padded_subimages"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown model keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(
            vision=PartSpec(**raw["vision"]),
            llm=PartSpec(**raw["llm"]),
            tokenizer=raw.get("tokenizer"),
            projector=raw.get("projector", "mlp2x_gelu"),
            vision_feature_layer=int(raw.get("vision_feature_layer", -2)),
            vision_feature_select_strategy=raw.get("vision_feature_select_strategy", "default"),
            image_processor=dict(raw.get("image_processor", {})),
            image_grid_pinpoints=([[int(side) for side in pinpoint] for pinpoint in raw["image_grid_pinpoints"]]
                                  if raw.get("image_grid_pinpoints") is not None else None),
            skip_padded_subimages=bool(raw.get("skip_padded_subimages", False)),
        )


def _vision_config(part: PartSpec) -> PretrainedConfig:
    if part.config is not None:
        fields = dict(part.config)
        model_type = fields.pop("model_type", "clip_vision_model")
        if model_type not in VISION_CONFIG_CLASSES:
            raise ValueError(f"unknown vision model_type {model_type!r}; known: {sorted(VISION_CONFIG_CLASSES)}")
        return VISION_CONFIG_CLASSES[model_type](**fields)
    config = AutoConfig.from_pretrained(part.pretrained, **part.load_options)
    # A full CLIP/SigLIP checkpoint holds text and vision; keep the vision half.
    return getattr(config, "vision_config", config)


def _llm_config(part: PartSpec) -> PretrainedConfig:
    """The LLM's config as a native transformers class: a remote-code LLM (trust_remote_code in the
    recipe) is stated as the native class it folds onto exactly, so the composed Llava, its saved
    text config and every later load need no remote code."""
    if part.config is not None:
        fields = dict(part.config)
        model_type = fields.pop("model_type", "llama")
        return AutoConfig.for_model(model_type, **fields)
    config = AutoConfig.from_pretrained(part.pretrained, **part.load_options)
    if crystalcoder.is_crystalcoder(config.to_dict()):
        return crystalcoder.stablelm_config(config.to_dict())
    if config.model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"LLM {part.pretrained}: model_type {config.model_type!r} is remote code with no native transformers form; "
            f"a Llava checkpoint must reload without its code, so crystalvlm composes remote-code LLMs it can fold "
            f"onto a native class exactly (known: {crystalcoder.MODEL_TYPE} -> stablelm)")
    return config


def _load_vision_weights(model: LlavaForConditionalGeneration, part: PartSpec) -> None:
    """Copy a pretrained vision tower (from a CLIP/SigLIP checkpoint, full or vision-only)."""
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(part.pretrained, **part.load_options)
    source = getattr(loaded, "vision_model", None)
    target = model.model.vision_tower
    if source is not None:
        # Older transformers wrap the tower (CLIPVisionModel.vision_model); newer ones hold its layers directly.
        inner = target.vision_model if hasattr(target, "vision_model") else target
        missing, unexpected = inner.load_state_dict(source.state_dict(), strict=False)
    else:
        missing, unexpected = target.load_state_dict(loaded.state_dict(), strict=False)
    if missing:
        raise ValueError(f"vision checkpoint {part.pretrained} lacks weights: {missing[:5]}...")


def _load_llm_weights(model: LlavaForConditionalGeneration, part: PartSpec) -> None:
    """Copy a pretrained causal LM into the Llava's decoder and head. The decoder is found as
    transformers defines it (`base_model`: `.model` for Llama, `.transformer` for GPT-style code),
    and a remote-code CrystalCoder is folded onto its native form first (equal logits)."""
    loaded = AutoModelForCausalLM.from_pretrained(part.pretrained, **part.load_options)
    if crystalcoder.is_crystalcoder(loaded.config.to_dict()):
        loaded = crystalcoder.native_crystalcoder(loaded)
    missing, _ = model.model.language_model.load_state_dict(loaded.base_model.state_dict(), strict=False)
    if missing:
        raise ValueError(f"LLM checkpoint {part.pretrained} lacks weights: {missing[:5]}...")
    model.lm_head.load_state_dict(loaded.get_output_embeddings().state_dict())


def extra_vision_tokens(vision_config: PretrainedConfig) -> int:
    """Tokens the tower emits besides its patches: CLIP's CLS token; SigLIP has none."""
    return 1 if vision_config.model_type == "clip_vision_model" else 0


def image_token_count(vision_config: PretrainedConfig, strategy: str) -> int:
    """How many `<image>` tokens one image becomes (HF LlavaProcessor's rule)."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    extra = extra_vision_tokens(vision_config)
    if strategy == "default" and extra == 0:
        raise ValueError("feature select strategy 'default' drops a CLS token; this tower has none, use 'full'")
    return patches + extra - (1 if strategy == "default" else 0)


def build_image_processor(vision_config: PretrainedConfig, overrides: dict[str, Any], image_mode: str | None = None,
                          pinpoints: list[list[int]] | None = None):
    """The processor saved with the model. For image_mode `pad` it is a LlavaImageProcessor with
    `do_pad` (LLaVA's expand2square with the mean colour, then the resize), so plain transformers,
    vLLM and lmms-eval reading the checkpoint see the pixels the model was trained on. For `anyres`
    it is a LlavaNextImageProcessor with the model's grid pinpoints."""
    side = vision_config.image_size
    settings: dict[str, Any] = {
        "size": {"height": side, "width": side},
        "do_center_crop": False,
        "crop_size": {"height": side, "width": side},
    }
    settings.update(overrides)
    if image_mode == "anyres":
        return LlavaNextImageProcessor(**settings, image_grid_pinpoints=pinpoints, do_pad=True)
    if image_mode == "pad":
        from transformers import LlavaImageProcessor

        return LlavaImageProcessor(**settings, do_pad=True)
    return CLIPImageProcessor(**settings)


def grid_pinpoints(spec: ModelSpec, side: int) -> list[list[int]]:
    """The anyres grid: the recipe's pinpoints (checked: each side a multiple of the tower's `side`),
    else LLaVA-NeXT's five layouts at this tower's side."""
    if spec.image_grid_pinpoints is None:
        return [[side, 2 * side], [2 * side, side], [2 * side, 2 * side], [side, 3 * side], [3 * side, side]]
    pinpoints = spec.image_grid_pinpoints
    if not pinpoints or any(len(pinpoint) != 2 or min(pinpoint) < side or pinpoint[0] % side or pinpoint[1] % side
                            for pinpoint in pinpoints):
        raise ValueError(f"image_grid_pinpoints {pinpoints}: each must be [height, width] in pixels, multiples of "
                         f"the vision tower's side {side}")
    return pinpoints


def build_llava(spec: ModelSpec, chat_template: str | None = None, image_mode: str | None = None):
    """Compose the model and its processor. Pretrained parts have their weights loaded;
    `image_mode` (the recipe's) decides what preprocessing the saved image processor carries and,
    for `anyres`, the class: (LlavaNextForConditionalGeneration, LlavaNextProcessor); otherwise
    (LlavaForConditionalGeneration, LlavaProcessor)."""
    if spec.projector not in PROJECTOR_ACTIVATION:
        raise ValueError(f"unknown projector {spec.projector!r}; known: {sorted(PROJECTOR_ACTIVATION)}")
    if spec.vision_feature_select_strategy not in FEATURE_SELECT:
        raise ValueError(f"unknown feature select strategy {spec.vision_feature_select_strategy!r}; known: {FEATURE_SELECT}")
    tokenizer_path = spec.tokenizer or spec.llm.pretrained
    if tokenizer_path is None:
        raise ValueError("a model built from an LLM config needs an explicit 'tokenizer' path")
    # The LLM's revision applies to its own tokenizer, not to a separately named one.
    revision = spec.llm.revision if tokenizer_path == spec.llm.pretrained else None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=spec.llm.trust_remote_code,
                                              revision=revision)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        # LLaVA pads Llama with unk; a dedicated pad token is never trained on either way.
        tokenizer.add_special_tokens({"pad_token": tokenizer.unk_token or "<pad>"})

    vision_config = _vision_config(spec.vision)
    text_config = _llm_config(spec.llm)
    if not text_config.architectures:
        # Serving engines (vLLM) choose the LLM's class by it; a part built from a config has none.
        text_config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[text_config.model_type]]
    image_tokens = image_token_count(vision_config, spec.vision_feature_select_strategy)
    anyres = image_mode == "anyres"
    if spec.image_grid_pinpoints is not None and not anyres:
        raise ValueError(f"image_grid_pinpoints is an anyres setting; image_mode is {image_mode!r}")
    common = dict(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_tokens,  # anyres: the whole view's tokens; the sub-images add more
        projector_hidden_act=PROJECTOR_ACTIVATION[spec.projector],
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
    )
    if anyres:
        pinpoints = grid_pinpoints(spec, vision_config.image_size)
        config = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
    else:
        config = LlavaConfig(**common)
    config.pad_token_id = tokenizer.pad_token_id
    model = LlavaNextForConditionalGeneration(config) if anyres else LlavaForConditionalGeneration(config)
    if spec.projector == "linear":
        start_as_one_linear_map(model.model.multi_modal_projector)
    if spec.skip_padded_subimages:
        if not anyres:
            raise ValueError(f"skip_padded_subimages is an anyres setting; image_mode is {image_mode!r}")
        from crystalvlm.models.skip_tokens import enable_skip_tokens

        enable_skip_tokens(model)
    if spec.vision.pretrained:
        _load_vision_weights(model, spec.vision)
    if spec.llm.pretrained:
        _load_llm_weights(model, spec.llm)
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    image_processor = build_image_processor(vision_config, spec.image_processor, image_mode,
                                            pinpoints if anyres else None)
    processor = (LlavaNextProcessor if anyres else LlavaProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        chat_template=chat_template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=extra_vision_tokens(vision_config),
    )
    return model, processor


def start_as_one_linear_map(projector: torch.nn.Module) -> None:
    """Make the native two-layer `linear` projector start as the single Linear LLaVA builds.

    Left to the library's initialisation both layers are drawn with std 0.02, and their product is
    a map ~0.02 * 0.02 * sqrt(width) strong whose two factors barely move at first, as in any deep
    linear network started near zero, and learning is slow to start (docs/web-world-status.md
    measures it). So `linear_1`
    is initialised as `torch.nn.Linear` initialises itself (what LLaVA's own `linear` projector
    starts from) and `linear_2`, square at the text width, as the identity with zero bias."""
    with torch.no_grad():
        projector.linear_1.reset_parameters()
        torch.nn.init.eye_(projector.linear_2.weight)
        if projector.linear_2.bias is not None:
            projector.linear_2.bias.zero_()
