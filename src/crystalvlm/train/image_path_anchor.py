"""Keep the image path (vision tower, projector) in the graph of a micro-batch that has no image.

With modality-length grouping a text-only record forms a text-only micro-batch. The Llava forward
then never calls the vision tower or the projector, so:
  - a stage that trains only those parts (alignment) gets a loss with no grad_fn, and backward fails;
  - under DDP the rank with the text-only micro-batch produces no gradient for them while another
    rank does, which needs `find_unused_parameters` (a walk of the whole autograd graph every step)
    or fails outright without it.

The fix is LLaVA's: run a dummy image through the trained part of the image path and add
`0 * sum(features)` to the model's hidden states. The values do not change (x + 0 == x for finite
x), the gradient reaching every trained image-path parameter is exactly zero, and every rank uses
every trained parameter in every micro-batch. The dummy runs inside the model's forward (a forward
hook on the LlavaModel), so DDP and FSDP see it as part of the wrapped module's forward.

Micro-batches that have images are left untouched: their loss and gradients are bitwise those of
the plain model. One consequence is intended: in an optimizer step whose whole global batch is
text-only, the image path's gradient is zero rather than absent, so AdamW still moves it by its
momentum (and weight decay), as in LLaVA, instead of skipping it for that step.
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle


def _trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def dummy_image_features(llava_model: torch.nn.Module) -> torch.Tensor:
    """The projected features of one all-zero image: (1, image_tokens, text_hidden).

    The tower runs without building a graph when it is frozen (its output is then a constant), so
    a stage that trains only the projector pays one tower forward and no tower backward."""
    vision_config = llava_model.config.vision_config
    reference = next(llava_model.vision_tower.parameters())
    size = vision_config.image_size
    dummy = torch.zeros(1, vision_config.num_channels, size, size, dtype=reference.dtype,
                        device=reference.device)  # (1, 3, S, S)
    with torch.set_grad_enabled(torch.is_grad_enabled() and _trains(llava_model.vision_tower)):
        outputs = llava_model.vision_tower(dummy, output_hidden_states=True, return_dict=True)
    layer = llava_model.config.vision_feature_layer
    layers = [layer] if isinstance(layer, int) else list(layer)
    selected = [outputs.hidden_states[index] for index in layers]  # each (1, 1 + patches, vision_hidden)
    if llava_model.config.vision_feature_select_strategy == "default":
        selected = [hidden[:, 1:] for hidden in selected]  # drop CLS, as the model does
    return llava_model.multi_modal_projector(torch.cat(selected, dim=-1))  # (1, patches, text_hidden)


def _anchor_text_only_batches(llava_model, args, kwargs, output):
    if kwargs.get("pixel_values") is not None or not torch.is_grad_enabled():
        return output
    anchor = dummy_image_features(llava_model).sum() * 0.0  # () zero, with a grad_fn into the image path
    # A 0-dim tensor does not promote the (B, T, C) hidden states: their dtype is kept under autocast.
    output.last_hidden_state = output.last_hidden_state + anchor.to(output.last_hidden_state.dtype)
    if output.hidden_states is not None:
        # The chunked loss (train/chunked_loss.py) reads the last of these instead of the logits.
        output.hidden_states = (*output.hidden_states[:-1], output.last_hidden_state)
    return output


def keep_image_path_in_graph(model) -> RemovableHandle | None:
    """Hook `model` (a LlavaForConditionalGeneration) so a micro-batch without images still
    reaches its trained vision tower and projector with zero gradient. None when neither trains
    (nothing to keep). Call after the freeze policy; remove the handle when the stage ends."""
    llava_model = model.model
    if not (_trains(llava_model.vision_tower) or _trains(llava_model.multi_modal_projector)):
        return None
    return llava_model.register_forward_hook(_anchor_text_only_batches, with_kwargs=True)
