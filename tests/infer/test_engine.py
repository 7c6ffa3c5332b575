"""The engine: batched = one at a time = transformers' generate; stops, lengths, streaming, errors."""

from __future__ import annotations

import threading

import pytest
import torch

from crystalvlm.data.templates import Turn
from crystalvlm.infer.decoding.config import DecodingConfig
from crystalvlm.infer.engine import GenerationEngine, GenerationRequest, RequestError

from infer_fixtures import square_image

MAX_NEW = 8


def one_at_a_time(engine, requests, config):
    return [engine.generate([request], config)[0] for request in requests]


def hf_generate(engine, request, **settings) -> list[int]:
    prepared = engine.prepare(request)
    ids = torch.tensor([prepared.input_ids])
    extra = {"pixel_values": prepared.pixel_values} if prepared.pixel_values is not None else {}
    output = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, **extra, **settings)
    return output[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_batched_greedy_equals_one_at_a_time(engine, mixed_requests, batch_size):
    config = DecodingConfig(max_new_tokens=MAX_NEW)
    alone = one_at_a_time(engine, mixed_requests, config)
    engine.batch_size, previous = batch_size, engine.batch_size
    try:
        batched = engine.generate(mixed_requests, config)
    finally:
        engine.batch_size = previous
    assert [result.token_ids for result in batched] == [result.token_ids for result in alone]
    assert [result.text for result in batched] == [result.text for result in alone]
    # The prompts differ, so the answers are not all one answer returned in the wrong order.
    assert len({tuple(result.token_ids) for result in alone}) > 1


def test_greedy_equals_transformers_generate(engine, mixed_requests):
    config = DecodingConfig(max_new_tokens=MAX_NEW)
    for request, result in zip(mixed_requests, one_at_a_time(engine, mixed_requests, config)):
        reference = hf_generate(engine, request, do_sample=False)
        # generate stops after eos; our token_ids include the eos as well.
        assert result.token_ids == reference[: len(result.token_ids)]
        assert len(result.token_ids) == len(reference)


def test_beam_search_equals_transformers_and_batches(engine, mixed_requests):
    config = DecodingConfig.parse("beam:num_beams=3", max_new_tokens=MAX_NEW)
    alone = one_at_a_time(engine, mixed_requests, config)
    for request, result in zip(mixed_requests, alone):
        assert result.token_ids == hf_generate(engine, request, do_sample=False, num_beams=3)
    batched = engine.generate(mixed_requests, config)
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]


def test_beam_search_differs_from_greedy_somewhere(engine, mixed_requests):
    greedy = engine.generate(mixed_requests, DecodingConfig(max_new_tokens=MAX_NEW))
    beam = engine.generate(mixed_requests, DecodingConfig.parse("beam:num_beams=3", max_new_tokens=MAX_NEW))
    assert any(g.token_ids != b.token_ids for g, b in zip(greedy, beam))


def test_seeded_sampling_is_reproducible_alone_or_batched(engine, mixed_requests):
    config = DecodingConfig.parse("sample:temperature=1.5,seed=7", max_new_tokens=MAX_NEW)
    alone = one_at_a_time(engine, mixed_requests, config)
    batched = engine.generate(mixed_requests, config)
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    other_seed = engine.generate(mixed_requests, config.with_changes(seed=8))
    assert [r.token_ids for r in other_seed] != [r.token_ids for r in alone]
    greedy = engine.generate(mixed_requests, DecodingConfig(max_new_tokens=MAX_NEW))
    assert [r.token_ids for r in alone] != [r.token_ids for r in greedy]


def test_top_k_one_sampling_is_greedy(engine, mixed_requests):
    greedy = engine.generate(mixed_requests, DecodingConfig(max_new_tokens=MAX_NEW))
    top1 = engine.generate(mixed_requests, DecodingConfig.parse("sample:top_k=1,temperature=2", max_new_tokens=MAX_NEW))
    assert [r.token_ids for r in top1] == [r.token_ids for r in greedy]


def _early_stop_string(engine, result) -> str | None:
    """Three characters of `result.text` that first occur after its start, end before its last
    token's text and are not U+FFFD (a tiny random model emits lone bytes, which the text stream
    holds back until they resolve, so a stop made of them may be seen only at the end)."""
    before_last = len(engine.tokenizer.decode(result.token_ids[:-1]))
    for start in range(1, before_last - 2):
        stop = result.text[start:start + 3]
        if "\ufffd" not in stop and result.text.index(stop) == start:
            return stop
    return None


def test_length_limit_and_stop_strings(engine, mixed_requests):
    # A stop string taken from inside an answer ends it right before that string: the first
    # request whose greedy answer has one that can end it early.
    for request in mixed_requests:
        result = engine.generate([request], DecodingConfig(max_new_tokens=MAX_NEW))[0]
        assert result.finish_reason == "length" and len(result.token_ids) == MAX_NEW
        stop = _early_stop_string(engine, result)
        if stop is not None:
            break
    else:
        pytest.fail("no greedy answer of the tiny model has a stop string that can end it early")
    assert stop and stop in result.text
    stopped = engine.generate([GenerationRequest(request.turns, request.images, stop_strings=(stop,))],
                              DecodingConfig(max_new_tokens=MAX_NEW))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == result.text[: result.text.index(stop)]
    assert stopped.token_ids == result.token_ids[: len(stopped.token_ids)]
    assert len(stopped.token_ids) < MAX_NEW


def test_eos_ends_the_answer(engine, mixed_requests):
    eos = engine.tokenizer.eos_token_id

    def favour_eos(module, inputs, logits):  # logits (B, T, V): make the model say eos at once
        logits[..., eos] += 1e4
        return logits

    hook = engine.model.lm_head.register_forward_hook(favour_eos)
    try:
        result = engine.generate(mixed_requests[:1], DecodingConfig(max_new_tokens=MAX_NEW))[0]
    finally:
        hook.remove()
    assert result.token_ids == [eos] and result.text == "" and result.finish_reason == "stop"


def test_stream_pieces_add_up_to_the_answer(engine, mixed_requests):
    for strategy in ("greedy", "beam:num_beams=2"):
        config = DecodingConfig.parse(strategy, max_new_tokens=MAX_NEW)
        expected = engine.generate([mixed_requests[2]], config)[0].text
        pieces = list(engine.stream(mixed_requests[2], config))
        assert "".join(pieces) == expected
    assert len(list(engine.stream(mixed_requests[2], DecodingConfig(max_new_tokens=MAX_NEW)))) > 1


def test_cancelled_request_stops_early(engine, mixed_requests):
    cancel = threading.Event()
    cancel.set()
    request = GenerationRequest(mixed_requests[0].turns, mixed_requests[0].images, cancel=cancel)
    result = engine.generate([request, mixed_requests[1]], DecodingConfig(max_new_tokens=MAX_NEW))
    assert result[0].finish_reason == "cancelled" and len(result[0].token_ids) == 1
    assert result[1].finish_reason != "cancelled"


def test_results_come_back_in_request_order(engine, mixed_requests):
    config = DecodingConfig(max_new_tokens=MAX_NEW)
    forward = engine.generate(mixed_requests, config)
    backward = engine.generate(list(reversed(mixed_requests)), config)
    assert [r.token_ids for r in backward] == [r.token_ids for r in reversed(forward)]
    assert [r.prompt_tokens for r in forward] == [engine.prepare(q).length for q in mixed_requests]


def test_bad_requests_are_refused_with_their_index(engine, mixed_requests):
    config = DecodingConfig(max_new_tokens=MAX_NEW)
    missing_image = GenerationRequest([Turn("user", "<image>\nWhat colour?")], [])
    with pytest.raises(RequestError, match=r"request 1: .*1 <image> placeholder\(s\) but 0 image"):
        engine.generate([mixed_requests[1], missing_image], config)
    extra_image = GenerationRequest([Turn("user", "What colour?")], [square_image("red")])
    with pytest.raises(RequestError, match="0 <image> placeholder"):
        engine.generate([extra_image], config)
    with pytest.raises(RequestError, match="alternate"):
        engine.generate([GenerationRequest([Turn("assistant", "hi")])], config)
    with pytest.raises(RequestError, match="at most 512 positions"):
        engine.generate([mixed_requests[1]], DecodingConfig(max_new_tokens=600))


def test_foreign_checkpoint_uses_the_processor_chat_template(engine, mixed_requests):
    """Without a template name, prompts come from the processor's chat template — the same ids here."""
    foreign = GenerationEngine(engine.model, engine.processor, None, "pad")
    for request in mixed_requests:
        assert foreign.prepare(request).input_ids == engine.prepare(request).input_ids
    config = DecodingConfig(max_new_tokens=MAX_NEW)
    assert [r.token_ids for r in foreign.generate(mixed_requests[:2], config)] == \
        [r.token_ids for r in engine.generate(mixed_requests[:2], config)]


def test_answers_read_like_decode_with_special_tokens_skipped(engine):
    """A special token the model emits mid-answer (one that is not a stop) is dropped from the text
    and from the streamed pieces, exactly as LLaVA's scripts read answers with
    `decode(..., skip_special_tokens=True)`; the pieces joined equal the final text."""
    from crystalvlm.infer.text_stream import AnswerText, StopRule

    tokenizer = engine.processor.tokenizer
    words = tokenizer("a red star and", add_special_tokens=False)["input_ids"]
    more = tokenizer(" two blue circles", add_special_tokens=False)["input_ids"]
    specials = [i for i in tokenizer.all_special_ids if i is not None]
    assert specials
    for special in specials:
        ids = words + [special] + more + [special]
        kept = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        skipped = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert kept != skipped
        answer = AnswerText(tokenizer, StopRule(frozenset(), ()))
        pieces = []
        for token in ids:
            answer.add(token)
            pieces.append(answer.take_stream_piece())
        answer.finish("length")
        pieces.append(answer.take_stream_piece())
        assert answer.text == kept and answer.visible_text == skipped
        assert "".join(pieces) == skipped


# ---------------------------------------------------------------------------- the cache's keyword
def test_cache_keyword_is_the_installed_transformers_one(engine):
    """The runner passes the KV cache under the name this transformers' forward takes: `cache` where
    `past_key_values` is deprecated (5.24), `past_key_values` in releases that only know it."""
    import inspect
    import warnings

    import transformers
    from packaging.version import Version

    from crystalvlm.infer.runner import cache_keyword

    keyword = cache_keyword(type(engine.model))
    assert keyword in inspect.signature(type(engine.model).forward).parameters
    if Version(transformers.__version__) >= Version("5.24"):
        assert keyword == "cache"
    # The other name, where the release still takes it, is the deprecated one.
    ids = torch.tensor([engine.prepare(GenerationRequest([Turn("user", "hi")])).input_ids])
    with torch.no_grad():
        first = engine.model(input_ids=ids, use_cache=True)
        cache = getattr(first, keyword)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.model(input_ids=ids[:, -1:], use_cache=True, **{keyword: cache})
        assert not [w for w in caught if issubclass(w.category, FutureWarning)]
        if keyword == "cache":
            with pytest.warns(FutureWarning, match="past_key_values"):
                engine.model(input_ids=ids[:, -1:], use_cache=True, past_key_values=getattr(first, keyword))


def test_generation_uses_no_deprecated_cache_name(engine, mixed_requests, monkeypatch):
    """Every strategy, and the shared-prefix prefill (it passes a cache from its second forward on), with
    deprecation warnings as errors; the output's `past_key_values` alias (a logged warning) is not read either."""
    import warnings

    from transformers.utils.generic import ModelOutput

    from crystalvlm.infer.runner import cache_keyword

    if cache_keyword(type(engine.model)) == "cache":
        def deprecated_alias(_output):
            raise AssertionError("the runner read output.past_key_values, deprecated in this transformers")

        monkeypatch.setattr(ModelOutput, "past_key_values", property(deprecated_alias))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        for decoding in ("greedy", "sample:seed=1", "beam:num_beams=2", "opera:num_beams=2", "vcd"):
            results = engine.generate(mixed_requests, DecodingConfig.parse(decoding, max_new_tokens=3))
            assert all(result.token_ids for result in results)


def test_equal_prompts_are_tokenised_once_and_get_their_own_ids(engine, monkeypatch):
    prompts = engine.prompts
    conversations = [[Turn("user", "<image>\nIs there a circle?")], [Turn("user", "<image>\nIs there a star?")],
                     [Turn("user", "<image>\nIs there a circle?")]]
    sizes = [[(32, 32)]] * 3
    alone = [prompts.encoder.prompt_ids(turns, size) for turns, size in zip(conversations, sizes)]
    seen = []
    real = type(prompts.encoder).prompt_ids_many
    monkeypatch.setattr(type(prompts.encoder), "prompt_ids_many",
                        lambda encoder, many, many_sizes: seen.append(len(many)) or real(encoder, many, many_sizes))
    ids = prompts.ids_of_many(conversations, sizes)
    assert seen == [2]  # the repeated question once
    assert ids == alone
    ids[0].append(7)  # a caller extending one prompt (an answer prefix) leaves its twin alone
    assert ids[2] == alone[2]
