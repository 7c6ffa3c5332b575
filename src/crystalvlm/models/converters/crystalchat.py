"""`crystalvlm convert crystalchat`: CrystalChat-7B-MLLM as released, as a native HF Llava.

The release is LLaVA's code around LLM360's remote-code CrystalCoder (`LlavaCrystalForCausalLM`,
model_type `llava_crystal`): CrystalCoder's config fields plus LLaVA's `mm_*` fields; weights
`transformer.*` (the GPT-style stack: wte, h.N, ln_f), `lm_head.weight`,
`transformer.mm_projector.*`, and the tower from `mm_vision_tower` (or saved under
`transformer.vision_tower.vision_tower.*`). LLaVA's code embeds the prompt with the bare `wte` and
hands the spliced embeddings to CrystalCoder, which multiplies *all* of them, image features
included, by `mup_embeddings_scale`.

The LLM folds onto StableLM (see `crystalcoder`), with the embedding scale folded into
`embed_tokens`; so that image features are scaled as the source scales them, the same factor is
folded into the projector's last layer. The result loads without remote code.
"""

from __future__ import annotations

from pathlib import Path

from crystalvlm.models.converters.crystalcoder import CannotFoldError, embedding_scale, fold_crystalcoder
from crystalvlm.models.converters import TEMPLATES
from crystalvlm.models.converters.native_llava import ConvertedParts, write_native_llava
from crystalvlm.models.converters.original_layout import ConversionError, read_original

ARCHITECTURES = ("LlavaCrystalForCausalLM",)
TEMPLATE = TEMPLATES["crystalchat"]


def convert_crystalchat(source: str | Path, out: str | Path, vision_tower: str | None = None,
                        chat_template: str | None = None) -> Path:
    """Convert and write `out`; returns it. Raises ConversionError (nothing written) on a wrong source."""
    original = read_original(source, ARCHITECTURES, "CrystalChat-MLLM (LlavaCrystalForCausalLM)", vision_tower)
    config = original.config
    try:
        text_config, text_weights = fold_crystalcoder(config, original.weights, prefix="transformer.")
    except CannotFoldError as error:
        raise ConversionError(f"{source}: {error}") from None
    projector = dict(original.projector_weights("transformer"))
    scale = embedding_scale(config)
    for name in ("linear_2.weight", "linear_2.bias"):
        projector[name] = (projector[name].double() * scale).to(projector[name].dtype)
    parts = ConvertedParts(
        text_config=text_config, text_weights=text_weights,
        projector=projector, projector_activation=original.projector_activation,
        vision_tower=vision_tower or config.get("mm_vision_tower") or config["vision_tower"],
        vision_weights=original.vision_tower_weights("transformer"),
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_strategy=original.feature_strategy,
        tokenizer_folder=original.folder, image_mode=original.image_mode, template=TEMPLATE,
        chat_template=chat_template,
    )
    return write_native_llava(parts, Path(out), original.folder, "crystalchat")
