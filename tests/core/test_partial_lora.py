"""Partial LoRA (PLoRA): updates only at image positions. Text-only inputs give the frozen base's
logits bit for bit whatever A and B hold; image inputs change at and after the image; the layers
learn an image question; cached generation matches uncached; checkpoints round-trip exactly."""

from __future__ import annotations

import pytest
import torch

from tiny_fixtures import COLOURS
from crystalvlm.models.checkpoint import load_checkpoint
from crystalvlm.models.partial_lora import (
    PARTIAL_LORA_CONFIG,
    PARTIAL_LORA_WEIGHTS,
    PartialLoraLinear,
    add_partial_lora,
    load_partial_lora,
    save_partial_lora,
)


def _square(colour: str):
    from PIL import Image

    image = Image.new("RGB", (48, 40), (245, 245, 245))
    image.paste(COLOURS[colour], (8, 8, 40, 32))
    return image


@pytest.fixture()
def base_and_wrapped(tiny_checkpoint):
    """(frozen base model, the same weights with PLoRA on every LLM Linear, processor)."""
    base, processor, _ = load_checkpoint(tiny_checkpoint)
    wrapped, _, _ = load_checkpoint(tiny_checkpoint)
    for model in (base, wrapped):
        model.requires_grad_(False)
        # A random tiny lm_head (std 0.02, width 64) spans logits too narrow for any confident answer;
        # scaled x20 the frozen head lets the PLoRA layers learn one.
        model.lm_head.weight.data.mul_(20)
    torch.manual_seed(0)
    parameters = add_partial_lora(wrapped, r=4, alpha=8.0, dropout=0.0, target_modules=None)
    return base, wrapped, processor, parameters


def _image_inputs(processor, colours=("red", "blue")):
    texts = [f"USER: <image>\nWhat colour is the square? ASSISTANT:" for _ in colours]
    return processor(text=texts, images=[_square(c) for c in colours], return_tensors="pt", padding=True)


def _text_inputs(processor):
    return processor(text=["USER: Name a colour. ASSISTANT:", "USER: Is it a square? ASSISTANT: Yes"],
                     return_tensors="pt", padding=True)


def _perturb(parameters, scale: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in parameters:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_wraps_every_language_model_linear_but_not_lm_head(base_and_wrapped):
    base, wrapped, _, parameters = base_and_wrapped
    llm_linears = [name for name, module in base.model.language_model.named_modules() if isinstance(module, torch.nn.Linear)]
    wrapped_layers = [module for module in wrapped.modules() if isinstance(module, PartialLoraLinear)]
    assert len(wrapped_layers) == len(llm_linears) > 0
    assert len(parameters) == 2 * len(llm_linears)
    assert all(parameter.requires_grad for parameter in parameters)
    assert type(wrapped.lm_head) is torch.nn.Linear
    assert not any(isinstance(m, PartialLoraLinear) for m in wrapped.model.vision_tower.modules())


def test_at_init_the_wrapped_model_equals_the_base(base_and_wrapped):
    base, wrapped, processor, _ = base_and_wrapped
    for inputs in (_image_inputs(processor), _text_inputs(processor)):
        assert torch.equal(_logits(wrapped, inputs), _logits(base, inputs))


def test_text_positions_see_the_base_exactly_image_positions_do_not(base_and_wrapped):
    base, wrapped, processor, parameters = base_and_wrapped
    _perturb(parameters)
    text = _text_inputs(processor)
    assert torch.equal(_logits(wrapped, text), _logits(base, text))
    # inputs_embeds without images: no image positions, so no update either.
    embeds = base.get_input_embeddings()(text["input_ids"])
    with torch.no_grad():
        by_embeds = wrapped(inputs_embeds=embeds, attention_mask=text["attention_mask"]).logits
    assert torch.equal(by_embeds, _logits(base, text))

    images = _image_inputs(processor)
    image_positions = (images["input_ids"] == wrapped.config.image_token_id)[0].nonzero().flatten()
    first_image = int(image_positions[0])
    wrapped_logits, base_logits = _logits(wrapped, images), _logits(base, images)
    # Before the image (causal attention) nothing changes; at and after it everything may.
    assert torch.equal(wrapped_logits[:, :first_image], base_logits[:, :first_image])
    changed = (wrapped_logits - base_logits).abs().amax(-1)[0]  # (T,)
    assert (changed[first_image:] > 1e-4).all()


def test_inputs_embeds_with_images_find_the_image_positions(base_and_wrapped):
    base, wrapped, processor, parameters = base_and_wrapped
    _perturb(parameters)
    images = _image_inputs(processor)
    embeds = wrapped.get_input_embeddings()(images["input_ids"])
    with torch.no_grad():
        by_embeds = wrapped(inputs_embeds=embeds, pixel_values=images["pixel_values"],
                            attention_mask=images["attention_mask"]).logits
    assert torch.equal(by_embeds, _logits(wrapped, images))


def test_learns_an_image_question_while_text_stays_bitwise_the_base(base_and_wrapped):
    base, wrapped, processor, parameters = base_and_wrapped
    tokenizer = processor.tokenizer
    colours = list(COLOURS)
    texts = [f"USER: <image>\nWhat colour is the square? ASSISTANT: {c.capitalize()}" for c in colours]
    batch = processor(text=texts, images=[_square(c) for c in colours], return_tensors="pt", padding=True)
    prompt_length = len(processor(text=["USER: <image>\nWhat colour is the square? ASSISTANT:"],
                                  images=[_square("red")], return_tensors="pt")["input_ids"][0])
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, prompt_length:] = batch["input_ids"][:, prompt_length:]  # the answer word's tokens
    labels[batch["attention_mask"] == 0] = -100
    assert tokenizer.padding_side == "right"  # so the answers start at prompt_length in every row
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    wrapped.train()
    losses = []
    for _ in range(40):
        loss = wrapped(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    wrapped.eval()
    assert losses[-1] < 0.1 * losses[0], losses
    # The same question, four images, four answers: the first answer token is read off the image.
    predicted = _logits(wrapped, batch)[:, prompt_length - 1].argmax(-1)
    assert torch.equal(predicted, batch["input_ids"][:, prompt_length])
    text = _text_inputs(processor)
    assert torch.equal(_logits(wrapped, text), _logits(base, text))


def test_cached_generation_equals_uncached(base_and_wrapped):
    _, wrapped, processor, parameters = base_and_wrapped
    _perturb(parameters, scale=0.3)
    inputs = _image_inputs(processor)
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():
        cached = wrapped.generate(**inputs, use_cache=True, **options)
        uncached = wrapped.generate(**inputs, use_cache=False, **options)
    assert cached.shape[1] == inputs["input_ids"].shape[1] + 6
    assert torch.equal(cached, uncached)


def test_save_load_round_trip_is_bitwise(base_and_wrapped, tmp_path):
    _, wrapped, processor, parameters = base_and_wrapped
    _perturb(parameters)
    folder = tmp_path / "plora"
    save_partial_lora(wrapped, folder)
    assert (folder / PARTIAL_LORA_CONFIG).is_file() and (folder / PARTIAL_LORA_WEIGHTS).is_file()
    loaded, loaded_processor = load_partial_lora(folder)
    for inputs in (_image_inputs(processor), _text_inputs(processor)):
        assert torch.equal(_logits(loaded, inputs), _logits(wrapped, inputs))
    assert loaded_processor.tokenizer("a red square")["input_ids"] == processor.tokenizer("a red square")["input_ids"]
    # The base weights are saved under their plain names: HF loads the folder as the base model
    # (crystalvlm's load_checkpoint adds the update back unless told not to).
    base_only, _, _ = load_checkpoint(folder, with_partial_lora=False)
    assert not any(isinstance(m, PartialLoraLinear) for m in base_only.modules())
    assert base_only.config.crystalvlm_partial_lora == PARTIAL_LORA_CONFIG


def test_a_folder_without_partial_lora_files_is_refused_by_name(tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match=str(tiny_checkpoint)) as error:
        load_partial_lora(tiny_checkpoint)
    assert PARTIAL_LORA_CONFIG in str(error.value)


def test_a_bad_target_module_name_is_refused(tiny_checkpoint):
    model, _, _ = load_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match="'qproj'.*q_proj"):
        add_partial_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["qproj"])
    with pytest.raises(ValueError, match="lm_head"):
        add_partial_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["lm_head"])


def test_named_targets_wrap_only_those_layers(tiny_checkpoint):
    model, _, _ = load_checkpoint(tiny_checkpoint)
    parameters = add_partial_lora(model, r=2, alpha=4, dropout=0.1, target_modules=["q_proj", "v_proj"])
    wrapped = [name for name, module in model.named_modules() if isinstance(module, PartialLoraLinear)]
    layers = len(model.model.language_model.layers)
    assert len(wrapped) == 2 * layers and len(parameters) == 4 * layers
    assert all(name.endswith(("q_proj", "v_proj")) for name in wrapped)
    with pytest.raises(ValueError, match="already"):
        add_partial_lora(model, r=2, alpha=4, dropout=0.0, target_modules=None)


def test_generation_uses_the_image_update(base_and_wrapped):
    base, wrapped, processor, parameters = base_and_wrapped
    _perturb(parameters, scale=0.3)
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    images, text = _image_inputs(processor), _text_inputs(processor)
    with torch.no_grad():
        assert not torch.equal(wrapped.generate(**images, **options), base.generate(**images, **options))
        assert torch.equal(wrapped.generate(**text, **options), base.generate(**text, **options))


def test_gradient_checkpointing_gives_the_same_gradients(base_and_wrapped):
    """Recomputation during backward must see the image positions of its forward."""
    _, wrapped, processor, parameters = base_and_wrapped
    _perturb(parameters, scale=0.1)
    inputs = _image_inputs(processor)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)

    def gradients() -> list[torch.Tensor]:
        for parameter in parameters:
            parameter.grad = None
        wrapped(**inputs, labels=labels).loss.backward()
        return [parameter.grad.clone() for parameter in parameters]

    wrapped.train()
    plain = gradients()
    wrapped.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = gradients()
    wrapped.gradient_checkpointing_disable()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))
    assert any(gradient.abs().sum() > 0 for gradient in checkpointed)


def test_saving_from_a_gathered_state_dict_and_refusing_a_plain_save(base_and_wrapped, tmp_path):
    from crystalvlm.models.checkpoint import CheckpointInfo, save_checkpoint

    _, wrapped, processor, parameters = base_and_wrapped
    _perturb(parameters)
    with pytest.raises(ValueError, match="save_partial_lora"):
        save_checkpoint(wrapped, processor, tmp_path / "plain", CheckpointInfo())
    # As the trainer saves: the full state dict (gathered from every rank) passed alongside.
    state_dict = {key: tensor.clone() for key, tensor in wrapped.state_dict().items()}
    save_partial_lora(wrapped, tmp_path / "plora", processor=processor, state_dict=state_dict)
    loaded, _ = load_partial_lora(tmp_path / "plora")
    inputs = _image_inputs(processor)
    assert torch.equal(_logits(loaded, inputs), _logits(wrapped, inputs))


def test_a_deep_copy_has_its_own_image_positions(base_and_wrapped):
    import copy

    base, wrapped, processor, parameters = base_and_wrapped
    _perturb(parameters)
    reference = copy.deepcopy(wrapped)
    with torch.no_grad():
        for layer in reference.modules():
            if isinstance(layer, PartialLoraLinear):
                layer.lora_B.weight.zero_()
    images = _image_inputs(processor)
    assert torch.equal(_logits(reference, images), _logits(base, images))
    perturbed = _logits(wrapped, images)
    assert not torch.equal(perturbed, _logits(base, images))
    # The copy's forward must not set or clear the original's positions (and the reverse).
    assert wrapped._partial_lora.positions is not reference._partial_lora.positions
    assert reference.model.get_placeholder_mask.positions is reference._partial_lora.positions
    hooks = list(reference.model._forward_pre_hooks.values())
    assert any(getattr(hook, "__self__", None) is reference.model.get_placeholder_mask for hook in hooks)
