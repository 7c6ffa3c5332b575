"""A request's decoding string cannot raise the server's caps.

The engine runs a request holding the model's lock, so one hostile string ("beam:num_beams=4096",
"opera:max_rollbacks=1000000000", or a max_new_tokens past the checked max_tokens) would make every
other client wait. Each is refused with a 400 in OpenAI's error format naming the setting, its value
and the cap, before any model work; the server keeps answering. The settings' own ranges (finite
numbers, seeds torch can take) are checked by the parser for every caller.
"""

from __future__ import annotations

import pytest

from crystalvlm.infer.decoding.config import DecodingConfig, DecodingConfigError
from crystalvlm.infer.decoding.limits import DecodingLimitError, DecodingLimits, default_caps
from crystalvlm.infer.decoding.registry import STRATEGIES

MODEL_NAME = "tiny-llava"
MAX_TOKENS = 16  # the test server's max_tokens
DEFAULT_MAX_TOKENS = 4


# ---------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from crystalvlm.infer.engine import GenerationEngine

    return GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4)


def serve(engine, decoding_limits: DecodingLimits | None = None):
    from fastapi.testclient import TestClient

    from crystalvlm.infer.openai_protocol import ServerLimits
    from crystalvlm.infer.server import build_app

    limits = ServerLimits(max_tokens=MAX_TOKENS, default_max_tokens=DEFAULT_MAX_TOKENS, batch_wait_ms=1)
    if decoding_limits is not None:
        limits = ServerLimits(max_tokens=MAX_TOKENS, default_max_tokens=DEFAULT_MAX_TOKENS, batch_wait_ms=1,
                              decoding=decoding_limits)
    return TestClient(build_app(engine, MODEL_NAME, limits=limits), base_url="http://localhost")


@pytest.fixture(scope="module")
def client(engine):
    with serve(engine) as test_client:
        yield test_client


def ask(client, decoding: str, **settings):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Name a colour."}], "decoding": decoding,
            **settings}
    return client.post("/v1/chat/completions", json=body)


def batches_run(client) -> int:
    return client.app.state.batcher.batches_run


HOSTILE = {
    # string: (the setting the error names, its value, the cap)
    "beam:num_beams=4096,max_new_tokens=4000": ("max_new_tokens", 4000, MAX_TOKENS),
    "beam:num_beams=4096": ("num_beams", 4096, 8),
    "opera:max_rollbacks=1000000000": ("opera.max_rollbacks", 1000000000, 10),
    "opera:num_candidates=5000": ("opera.num_candidates", 5000, 10),
    "opera:history=100000": ("opera.history", 100000, 1024),
    "opera:num_beams=64": ("num_beams", 64, 8),
    "vcd:alpha=1e30": ("vcd.alpha", 1e30, 10),
    "greedy:max_new_tokens=17": ("max_new_tokens", 17, MAX_TOKENS),
}


@pytest.mark.parametrize("decoding", list(HOSTILE))
def test_hostile_decoding_string_is_refused_before_any_model_work(client, decoding):
    key, value, cap = HOSTILE[decoding]
    before = batches_run(client)
    response = ask(client, decoding)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "decoding"
    assert error["code"] == "decoding_limit_exceeded"
    assert f"{key}={value} is over the cap of {cap}" in error["message"], error["message"]
    why = "this server's max_tokens" if key == "max_new_tokens" else "this server's limit"
    assert error["message"].endswith(f"({why})")
    assert batches_run(client) == before  # refused while parsing: the engine never saw it
    assert ask(client, "greedy").status_code == 200  # and the server keeps serving


def test_decoding_string_cannot_ask_for_more_tokens_than_max_tokens(client):
    refused = ask(client, "beam:num_beams=2,max_new_tokens=10", max_tokens=6)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == \
        "decoding setting max_new_tokens=10 is over the cap of 6 (the request's max_tokens)"
    # Asking for fewer than max_tokens is a client's right; so is, without max_tokens, any budget up to the server's.
    fewer = ask(client, "greedy:max_new_tokens=3", max_tokens=6)
    assert fewer.status_code == 200 and fewer.json()["usage"]["completion_tokens"] <= 3
    unset = ask(client, f"greedy:max_new_tokens={MAX_TOKENS}")
    assert unset.status_code == 200 and unset.json()["decoding"] == f"greedy:max_new_tokens={MAX_TOKENS}"


def test_decoding_within_the_caps_runs(client):
    for decoding in ("beam:num_beams=8", "opera:num_beams=2,max_rollbacks=10,num_candidates=3", "vcd:alpha=10"):
        response = ask(client, decoding, max_tokens=2)
        assert response.status_code == 200, response.text


def test_operator_caps_replace_the_defaults(engine):
    with serve(engine, DecodingLimits(caps={"num_beams": 2, "opera.max_rollbacks": 1})) as strict:
        assert ask(strict, "beam:num_beams=2", max_tokens=2).status_code == 200
        refused = ask(strict, "beam:num_beams=3", max_tokens=2)
        assert refused.status_code == 400 and "num_beams=3 is over the cap of 2" in refused.json()["error"]["message"]
        assert ask(strict, "opera:num_beams=2,max_rollbacks=2", max_tokens=2).status_code == 400
        # Greedy decoding reads no beam count: its default num_beams (5) is not held against it.
        assert ask(strict, "greedy", max_tokens=2).status_code == 200


# ---------------------------------------------------------------------------- the limits alone
def test_every_capped_setting_is_refused_one_past_its_cap():
    limits = DecodingLimits()
    assert set(default_caps()) == {"num_beams", "opera.num_candidates", "opera.max_rollbacks", "opera.history",
                                   "vcd.alpha"}
    for key, cap in default_caps().items():
        owner, _, name = key.rpartition(".")
        strategy = owner or "beam"
        over = cap + 1 if isinstance(cap, int) else cap * 1.5
        for value, refused in ((cap, False), (over, True)):
            config = DecodingConfig.parse(f"{strategy}:{name}={value}")
            if not refused:
                limits.check(config)
                continue
            with pytest.raises(DecodingLimitError) as caught:
                limits.check(config)
            assert (caught.value.key, caught.value.value, caught.value.cap) == (key, over, cap)
            assert f"{key}={over}" in str(caught.value) and f"cap of {cap}" in str(caught.value)


def test_the_chat_page_choices_are_within_the_default_caps():
    for decoding in ("greedy", "sample:temperature=0.7,top_p=0.9", "beam:num_beams=3", "opera", "vcd"):
        DecodingLimits().check(DecodingConfig.parse(decoding, max_new_tokens=256))


def test_limits_refuse_unknown_cap_names():
    with pytest.raises(ValueError, match="no decoding setting is capped as opera.rollbacks; capped settings: num_beams"):
        DecodingLimits(caps={"opera.rollbacks": 3})
    with pytest.raises(DecodingLimitError, match="max_new_tokens=65 is over the cap of 64"):
        DecodingLimits(max_new_tokens=64).check(DecodingConfig(max_new_tokens=65))


def test_caps_of_common_settings_apply_to_the_strategies_that_read_them():
    strict = DecodingLimits(caps={"num_beams": 1})
    for name, strategy in STRATEGIES.items():
        config = DecodingConfig.parse(name)  # num_beams 5 by default
        if "num_beams" in strategy.uses:
            with pytest.raises(DecodingLimitError):
                strict.check(config)
        else:
            strict.check(config)


# ---------------------------------------------------------------------------- ranges, for every caller
@pytest.mark.parametrize("text, message", [
    ("opera:scale_factor=nan", "opera scale_factor must be a finite number"),
    ("opera:penalty_weight=inf", "opera penalty_weight must be a finite number"),
    ("vcd:alpha=-inf", "vcd alpha must be a finite number"),
    ("vcd:beta=nan", "vcd beta must be a finite number"),
    ("sample:temperature=inf", "temperature must be a finite number"),
    ("sample:top_p=nan", "top_p must be a finite number"),
    ("beam:length_penalty=nan", "length_penalty must be a finite number"),
    ("sample:seed=18446744073709551616", "seed must be in"),  # 2**64: torch's generators overflow
    ("opera:max_rollbacks=-1", "opera max_rollbacks must be >= 0"),
    ("opera:history=0", "opera history must be >= 1"),
    ("vcd:noise_step=-1", r"vcd noise_step must be in \[0, 999\]"),
    ("greedy:top_k=-2", "top_k must be >= 0"),
])
def test_parser_refuses_values_out_of_range(text, message):
    with pytest.raises(DecodingConfigError, match=message):
        DecodingConfig.parse(text)


def test_seed_range_is_what_torch_takes():
    import torch

    from crystalvlm.infer.decoding.config import SEED_RANGE

    for seed in SEED_RANGE:
        torch.Generator().manual_seed(seed)
        DecodingConfig.parse(f"sample:seed={seed}")
    for seed in (SEED_RANGE[0] - 1, SEED_RANGE[1] + 1):
        with pytest.raises((RuntimeError, ValueError, OverflowError), match="[Oo]verflow"):
            torch.Generator().manual_seed(seed)
