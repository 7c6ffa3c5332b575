"""`crystalvlm convert llava`: an original LLaVA-1.5 checkpoint (liuhaotian format) as native HF Llava.

Source layout (`LlavaLlamaForCausalLM`): a Llama config with LLaVA's `mm_*` fields and
`image_aspect_ratio`; weights `model.*` (the Llama decoder), `lm_head.weight`,
`model.mm_projector.*`, and optionally the tower under `model.vision_tower.vision_tower.*` (usually
it is loaded from `mm_vision_tower`). Target: `LlavaForConditionalGeneration` with the decoder at
`model.language_model.*`, the projector at `model.multi_modal_projector.linear_{1,2}.*`, the tower
at `model.vision_tower.*`, and `<image>` added to the vocabulary: where LLaVA splices the features
at the one id -200, HF repeats `<image>` once per feature and scatters them in order, so the same
prompt gives the same sequence of embeddings and the same logits.
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlamaConfig

from crystalvlm.models.converters import TEMPLATES
from crystalvlm.models.converters.native_llava import ConvertedParts, write_native_llava
from crystalvlm.models.converters.original_layout import ConversionError, read_original

ARCHITECTURES = ("LlavaLlamaForCausalLM",)
LLAVA_FIELDS = ("mm_", "image_aspect_ratio", "image_grid_pinpoints", "tune_mm", "freeze_mm", "use_mm_proj",
                "unfreeze_mm", "mm_use_im", "image_token", "tokenizer_", "architectures", "auto_map", "model_type",
                "_name_or_path")  # LLaVA's training settings, not the Llama text model's
TEMPLATE = TEMPLATES["llava"]


def convert_llava(source: str | Path, out: str | Path, vision_tower: str | None = None,
                  chat_template: str | None = None) -> Path:
    """Convert and write `out`; returns it. Raises ConversionError (nothing written) on a wrong source."""
    original = read_original(source, ARCHITECTURES, "original LLaVA (LlavaLlamaForCausalLM)", vision_tower)
    config = original.config
    text_fields = {key: value for key, value in config.items() if not key.startswith(LLAVA_FIELDS)}
    text_config = LlamaConfig(**text_fields, architectures=["LlamaForCausalLM"])
    text_weights = {key: value for key, value in original.weights.items()
                    if (key.startswith("model.") and not key.startswith(("model.mm_projector.", "model.vision_tower.")))
                    or key == "lm_head.weight"}
    if "lm_head.weight" not in text_weights:
        if not config.get("tie_word_embeddings"):
            raise ConversionError(f"{source}: no lm_head.weight in the checkpoint")
        text_weights["lm_head.weight"] = text_weights["model.embed_tokens.weight"]
    parts = ConvertedParts(
        text_config=text_config, text_weights=text_weights,
        projector=original.projector_weights("model"), projector_activation=original.projector_activation,
        vision_tower=vision_tower or config.get("mm_vision_tower") or config["vision_tower"],
        vision_weights=original.vision_tower_weights("model"),
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_strategy=original.feature_strategy,
        tokenizer_folder=original.folder, image_mode=original.image_mode, template=TEMPLATE,
        chat_template=chat_template,
    )
    return write_native_llava(parts, Path(out), original.folder, "llava")
