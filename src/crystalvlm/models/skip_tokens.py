"""SPHINX-X skip tokens on transformers' LlavaNext: a sub-image that is entirely padding is not
encoded by the vision tower, and one learned embedding (`skip_embedding`, text width) stands in
for it.

Where the tokens go. LlavaNext packs an image as the whole view's features, then the grid's feature
map with `spatial_unpad` (rows and columns of padding cut away) and one `image_newline` per row. A
fully padded sub-image lies inside the cut-away padding, so its features never reach the LLM in the
native format either; what it still costs there is its pass through the vision tower. With skip
tokens the tower sees only the whole view and the sub-images that hold image pixels, the packing is
the native one (the skipped sub-images' places filled with zeros, which the unpadding removes), and
the image's run ends with one `skip_embedding` per skipped sub-image (row-major order). So an image
has `native tokens + skipped sub-images` tokens (`data/image_tokens.py` counts them).

The checkpoint. Everything native stays native: config.json says `crystalvlm_skip_padded_subimages:
true` (an extra key plain transformers keeps and ignores) and the learned embedding is
`skip_tokens.safetensors` beside the weights. Plain `transformers` therefore loads such a checkpoint
as the LlavaNext it is and runs it without skip tokens (the tower encodes every sub-image, no skip
embedding in the sequence); `models.checkpoint.load_checkpoint` restores them.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from crystalvlm.subimage_grid import padded_subimages

CONFIG_KEY = "crystalvlm_skip_padded_subimages"
WEIGHTS = "skip_tokens.safetensors"
PARAMETER = "skip_embedding"


def uses_skip_tokens(config) -> bool:
    return bool(getattr(config, CONFIG_KEY, False))


def enable_skip_tokens(model, embedding: torch.Tensor | None = None) -> None:
    """Give a LlavaNextForConditionalGeneration skip tokens: the learned embedding (new: drawn like
    `image_newline`) and an image-feature path that skips fully padded sub-images."""
    inner = model.model
    if getattr(model.config, "image_grid_pinpoints", None) is None:
        raise ValueError("skip_padded_subimages needs an anyres (LlavaNext) model: sub-images exist only there")
    hidden = model.config.text_config.hidden_size
    if embedding is None:
        embedding = torch.randn(hidden, dtype=inner.image_newline.dtype) / hidden ** 0.5
    if embedding.shape != (hidden,):
        raise ValueError(f"skip embedding of shape {tuple(embedding.shape)}; this model needs ({hidden},)")
    inner.skip_embedding = torch.nn.Parameter(embedding.to(inner.image_newline.device, inner.image_newline.dtype))
    inner.get_image_features = types.MethodType(_image_features_with_skips, inner)
    setattr(model.config, CONFIG_KEY, True)


def _image_features_with_skips(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor,
                               vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs):
    """LlavaNextModel.get_image_features with fully padded sub-images skipped (see the module doc).
    pixel_values (N, P, 3, S, S) or (sum P_i, 3, S, S); image_sizes (N, 2) as (height, width)."""
    config = self.config
    layer = vision_feature_layer if vision_feature_layer is not None else config.vision_feature_layer
    strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
    side = config.vision_config.image_size
    counts = [image_size_to_num_patches(size, config.image_grid_pinpoints, side) for size in image_sizes]
    if pixel_values.dim() == 5:
        per_image = [pixels[:count] for pixels, count in zip(pixel_values, counts)]
    else:
        per_image = list(torch.split(pixel_values, counts))
    keep_masks = []  # per image: (P_i,) bool, the whole view always kept
    for size, pixels in zip(image_sizes, per_image):
        height, width = (int(v) for v in size)
        padded = padded_subimages(height, width, config.image_grid_pinpoints, side) if pixels.shape[0] > 1 else []
        keep_masks.append(torch.tensor([True] + [not p for p in padded], device=pixels.device))
    kept = torch.cat([pixels[mask] for pixels, mask in zip(per_image, keep_masks)])  # (K, 3, S, S)
    hidden = self.vision_tower(kept, output_hidden_states=True, return_dict=True).hidden_states
    selected = torch.cat([hidden[i] for i in layer], dim=-1) if isinstance(layer, (list, tuple)) else hidden[layer]
    if strategy == "default":
        selected = selected[:, 1:]
    projected = self.multi_modal_projector(selected)  # (K, tokens per sub-image, D)
    # Back to every sub-image, zeros where skipped (inside the padding the unpadding removes).
    features, start = [], 0
    for mask in keep_masks:
        full = projected.new_zeros((mask.shape[0], *projected.shape[1:]))
        used = int(mask.sum())
        full[mask] = projected[start:start + used]
        start += used
        features.append(full)
    packed, _ = self.pack_image_features(features, image_sizes, vision_feature_select_strategy=strategy,
                                         image_newline=self.image_newline)
    with_skips = [torch.cat([image, self.skip_embedding[None].expand(int((~mask).sum()), -1).to(image)])
                  for image, mask in zip(packed, keep_masks)]
    return BaseModelOutputWithPooling(pooler_output=with_skips)


def save_skip_tokens(model, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({PARAMETER: model.model.skip_embedding.detach().float().cpu().contiguous()}, str(Path(folder) / WEIGHTS))


def load_skip_tokens(model, folder: Path) -> None:
    """Restore the skip tokens of a checkpoint whose config says it was trained with them."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: config.json says {CONFIG_KEY} but {WEIGHTS} is missing")
    enable_skip_tokens(model, load_file(str(path))[PARAMETER])
