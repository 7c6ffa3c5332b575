"""Packed shared-prefix prefill (batch prefix and group prefixes in one row with a tree-shaped mask),
one preprocessing per image object, and prompts tokenised in one call: the same answers as before."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from crystalvlm.data.templates import Turn, get_template
from crystalvlm.infer.decoding.config import DecodingConfig
from crystalvlm.infer.engine import GenerationRequest
from crystalvlm.infer.prompts import ImageMemo, collate
from crystalvlm.infer.runner import ModelRunner
from crystalvlm.infer.shared_prefix import pack_shared_prefill, plan_shared_prefill

from infer_fixtures import square_image


def ask(question: str, image) -> GenerationRequest:
    return GenerationRequest([Turn("user", "<image>\n" + question)], [image])


@pytest.fixture(scope="module")
def eval_like_requests() -> list[GenerationRequest]:
    """An evaluation's batch: three questions about one image, two about another, one text-only prompt."""
    red, blue = square_image("red"), square_image("blue", (40, 30))
    return [ask("Is there a square in the image?", red), ask("Is there a circle in the image?", red),
            ask("Is there a red triangle in the image? Answer yes or no.", red),
            ask("Is there a square in the image?", blue), ask("What colour is it?", blue),
            GenerationRequest([Turn("user", "Name a colour.")])]


@contextmanager
def engine_settings(engine, pack_up_to: int, share_prefixes: bool = True, batch_size: int = 8):
    saved = engine.pack_up_to, engine.share_prefixes, engine.batch_size
    engine.pack_up_to, engine.share_prefixes, engine.batch_size = pack_up_to, share_prefixes, batch_size
    try:
        yield engine
    finally:
        engine.pack_up_to, engine.share_prefixes, engine.batch_size = saved


def test_packed_prefill_computes_the_plain_prefill(engine, eval_like_requests):
    prompts = [engine.prepare(request) for request in eval_like_requests]
    packed = pack_shared_prefill(prompts, engine.image_token_id, engine.pad_token_id)
    steps = plan_shared_prefill(prompts, engine.image_token_id, engine.pad_token_id)
    assert packed is not None and steps is not None and len(steps) == 3
    # The packed row holds the batch prefix once and each group's prefix once, no padding.
    assert packed.input_ids.shape[1] == steps[0].attention_mask.sum() + steps[1].attention_mask.sum()
    assert packed.pixel_values.shape[0] == 2  # red once, blue once
    assert packed.gather.shape[0] == 3  # red group, blue group, the text prompt

    plain_batch, packed_batch = collate(prompts, engine.pad_token_id), collate(prompts, engine.pad_token_id)
    packed_batch.packed_prefill = packed
    plain, shared = ModelRunner(engine.model), ModelRunner(engine.model)
    plain_logits, packed_logits = plain.prefill(plain_batch), shared.prefill(packed_batch)
    torch.testing.assert_close(packed_logits, plain_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(shared.next_positions, plain.next_positions)
    tokens = plain_logits.argmax(dim=-1)
    for _ in range(3):  # decoding continues from the gathered cache as from the plain one
        plain_next, packed_next = plain.step(tokens), shared.step(tokens)
        torch.testing.assert_close(packed_next, plain_next, rtol=1e-4, atol=1e-4)
        tokens = plain_next.argmax(dim=-1)


def test_a_token_sees_only_its_own_prompt(engine, eval_like_requests):
    prompts = [engine.prepare(request) for request in eval_like_requests[:5]]
    packed = pack_shared_prefill(prompts, engine.image_token_id, engine.pad_token_id)
    visible = packed.visible
    assert torch.equal(visible, visible.tril())  # never a later token
    # Each gathered row (one per image group) sees all of its own earlier tokens and nothing else.
    red_row, blue_row = packed.gather[0][packed.attention_mask[0] == 1], packed.gather[1][packed.attention_mask[1] == 1]
    last_red, last_blue = int(red_row[-1]), int(blue_row[-1])
    assert visible[last_red].nonzero().flatten().tolist() == red_row.tolist()
    assert visible[last_blue].nonzero().flatten().tolist() == blue_row.tolist()
    assert not visible[last_blue, red_row[len(red_row) - 1]]  # the blue group never sees the red one's tokens


@pytest.mark.parametrize("strategy", ["greedy", "beam:num_beams=2"])
def test_packed_answers_equal_steps_and_plain(engine, eval_like_requests, strategy):
    config = DecodingConfig.parse(strategy, max_new_tokens=5)
    forwards = []
    handle = engine.model.model.language_model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        with engine_settings(engine, pack_up_to=2048):
            packed = engine.generate(eval_like_requests, config)
            packed_forwards, forwards[:] = len(forwards), []
        with engine_settings(engine, pack_up_to=0):
            stepped = engine.generate(eval_like_requests, config)
            stepped_forwards = len(forwards)
    finally:
        handle.remove()
    with engine_settings(engine, pack_up_to=2048, share_prefixes=False):
        plain = engine.generate(eval_like_requests, config)
    assert [r.token_ids for r in packed] == [r.token_ids for r in stepped] == [r.token_ids for r in plain]
    assert packed_forwards == stepped_forwards - 1  # the prefill takes two forwards instead of three


def test_no_packing_past_the_limit(engine, eval_like_requests):
    prompts = [engine.prepare(request) for request in eval_like_requests]
    assert pack_shared_prefill(prompts, engine.image_token_id, engine.pad_token_id, pack_up_to=10) is None
    assert pack_shared_prefill(prompts[:1], engine.image_token_id, engine.pad_token_id) is None


def test_an_image_object_is_preprocessed_once(engine, eval_like_requests):
    calls = []
    encoder = engine.prompts.encoder
    memo = ImageMemo(encoder)
    original = type(encoder).pixel_values

    def counting(self, images):
        calls.append(len(images))
        return original(self, images)

    type(encoder).pixel_values = counting
    try:
        memo.preprocess([image for request in eval_like_requests for image in request.images])
        with_memo = [engine.prepare(request, memo=memo) for request in eval_like_requests]
        assert calls == [2]  # the two distinct images, in one call; prepare found them all in the memo
        alone = [engine.prepare(request) for request in eval_like_requests]
    finally:
        type(encoder).pixel_values = original
    for ours, reference in zip(with_memo, alone):
        assert ours.input_ids == reference.input_ids
        assert (ours.pixel_values is None) == (reference.pixel_values is None)
        if ours.pixel_values is not None:
            assert torch.equal(ours.pixel_values, reference.pixel_values)
            assert ours.image_digests == reference.image_digests


def test_encode_many_equals_encode_one_by_one(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    template = get_template("vicuna_v1")
    training = [[Turn("user", "<image>\nWhat colour?"), Turn("assistant", "Red.")],
                [Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "Name a shape."), Turn("assistant", "A circle")]]
    prompts = [[Turn("user", "<image>\nIs there a square?")], [Turn("user", "Name a colour.")]]
    assert template.encode_many(training, tokenizer) == [template.encode(turns, tokenizer) for turns in training]
    assert template.encode_many(prompts, tokenizer, add_generation_prompt=True) == [
        template.encode(turns, tokenizer, add_generation_prompt=True) for turns in prompts]


def test_a_bad_request_among_many_is_still_named(engine, eval_like_requests):
    from crystalvlm.infer.prompts import RequestError

    bad = GenerationRequest([Turn("assistant", "I speak first.")])
    with pytest.raises(RequestError, match="request 2"):
        engine.generate(eval_like_requests[:2] + [bad], DecodingConfig(max_new_tokens=1))
