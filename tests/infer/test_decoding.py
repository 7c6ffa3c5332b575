"""Decoding strategies: the config language, sampling warpers, VCD and OPERA against their definitions."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from crystalvlm.infer.decoding.config import DecodingConfig, DecodingConfigError
from crystalvlm.infer.decoding.greedy_sampling import warp_logits
from crystalvlm.infer.decoding.opera import (
    PHI_CEILING,
    OperaSearch,
    candidate_scores,
    over_trust_scores,
)
from crystalvlm.infer.decoding.vcd import add_diffusion_noise, contrastive_logits, noise_schedule_alpha_bar

MAX_NEW = 8


# ---------------------------------------------------------------------------- the config language
def test_parse_strategies_and_settings():
    assert DecodingConfig.parse("greedy") == DecodingConfig()
    beam = DecodingConfig.parse("beam:num_beams=3")
    assert beam.strategy == "beam" and beam.num_beams == 3
    opera = DecodingConfig.parse("opera")
    assert (opera.num_beams, opera.opera.num_candidates, opera.opera.scale_factor, opera.opera.penalty_weight,
            opera.opera.threshold, opera.opera.max_rollbacks) == (5, 5, 50.0, 1.0, 15, 5)
    vcd = DecodingConfig.parse("vcd:alpha=1,beta=0.1,base=greedy")
    assert (vcd.vcd.alpha, vcd.vcd.beta, vcd.vcd.noise_step, vcd.vcd.base) == (1.0, 0.1, 500, "greedy")
    sample = DecodingConfig.parse("sample: temperature=0.7, top_p=0.9, seed=3", max_new_tokens=5)
    assert (sample.temperature, sample.top_p, sample.seed, sample.max_new_tokens) == (0.7, 0.9, 3, 5)
    assert DecodingConfig.parse("opera:rollback=off,penalty_weight=0").opera.rollback is False
    for text in ["beam:num_beams=3", "opera:threshold=4,num_beams=2", "vcd:alpha=0.5,base=sample,seed=2", "greedy"]:
        assert DecodingConfig.parse(DecodingConfig.parse(text).describe()) == DecodingConfig.parse(text)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("nucleus", "unknown strategy 'nucleus'"),
    ("beam:beams=3", "unknown setting 'beams' for 'beam'"),
    ("beam:alpha=1", "unknown setting 'alpha'"),
    ("vcd:alpha=x", "alpha='x'"),
    ("beam:num_beams", "not key=value"),
    ("sample:temperature=0", "temperature must be > 0"),
    ("sample:top_p=1.5", "top_p"),
    ("vcd:base=beam", "vcd base"),
    ("vcd:noise_step=1000", "noise_step"),
    ("opera:num_candidates=0", "num_candidates"),
])
def test_parse_refuses_bad_strings(text, message):
    with pytest.raises(DecodingConfigError, match=message):
        DecodingConfig.parse(text)


# ---------------------------------------------------------------------------- the registry
def test_registry_holds_each_strategy_under_its_exact_name():
    from crystalvlm.infer.decoding.registry import STRATEGIES, build_strategy, strategy_class

    assert list(STRATEGIES) == ["greedy", "sample", "beam", "opera", "vcd"]
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name and strategy_class(name) is strategy
        assert type(build_strategy(DecodingConfig.parse(name))) is strategy
    for wrong in ("Greedy", "beams", "gree", ""):
        with pytest.raises(DecodingConfigError, match="unknown strategy"):
            strategy_class(wrong)


def test_strategy_settings_are_their_params_and_reachable_by_name():
    opera = DecodingConfig.parse("opera:max_rollbacks=2")
    assert opera.params is opera.opera and opera.params.max_rollbacks == 2
    assert DecodingConfig(strategy="vcd").params == DecodingConfig.parse("vcd").vcd  # defaults filled in
    assert DecodingConfig.parse("greedy").params is None
    with pytest.raises(AttributeError):
        DecodingConfig.parse("greedy").opera
    assert opera.with_changes(opera=replace(opera.opera, warmup=3)).params.warmup == 3
    with pytest.raises(DecodingConfigError, match="wants its settings as OperaParams"):
        DecodingConfig(strategy="opera", params=DecodingConfig.parse("vcd").params)


def test_the_engine_names_no_strategy():
    """The engine runs what the registry hands it: no strategy's name appears in its code."""
    import inspect

    from crystalvlm.infer import engine, runner
    from crystalvlm.infer.decoding.registry import STRATEGIES

    for module in (engine, runner):
        source = inspect.getsource(module)
        code = source[source.index('"""', 3) + 3 :]  # after the module docstring
        for name in STRATEGIES:
            assert f'"{name}"' not in code and f"'{name}'" not in code, f"{module.__name__} names {name!r}"


def test_a_new_strategy_is_one_class_and_one_registry_entry(engine, mixed_requests, monkeypatch):
    """A strategy defined here, registered by one dict entry, is parsed, described, capped, batched as it
    declares and run by the engine — nothing else knows it."""
    from dataclasses import dataclass

    from crystalvlm.infer.decoding.greedy_sampling import PlainLogits, answer_token_by_token
    from crystalvlm.infer.decoding.limits import DecodingLimitError, DecodingLimits
    from crystalvlm.infer.decoding.registry import STRATEGIES
    from crystalvlm.infer.decoding.settings import setting
    from crystalvlm.infer.decoding.strategy import DecodingStrategy

    @dataclass(frozen=True)
    class RepeatParams:
        token: int = setting(0, low=0, server_cap=300)

    rows_per_batch = []

    class RepeatOneToken(DecodingStrategy):
        name = "repeat"
        params_type = RepeatParams
        one_request_at_a_time = True

        def decode(self, context, batch, controls):
            rows_per_batch.append(batch.rows)

            def choose(logits, _controls):  # (R, V) -> (R,)
                return torch.full((logits.shape[0],), self.params.token, dtype=torch.long)

            return answer_token_by_token(PlainLogits(context.runner), batch, controls, choose, context.tokenizer,
                                         self.config.max_new_tokens)

    monkeypatch.setitem(STRATEGIES, "repeat", RepeatOneToken)
    token = engine.tokenizer("red", add_special_tokens=False)["input_ids"][0]
    config = DecodingConfig.parse(f"repeat:token={token}", max_new_tokens=3)
    assert config.describe() == f"repeat:token={token},max_new_tokens=3"
    results = engine.generate(mixed_requests, config)
    assert [result.token_ids for result in results] == [[token] * 3] * len(mixed_requests)
    assert rows_per_batch == [1] * len(mixed_requests)
    with pytest.raises(DecodingConfigError, match="repeat token must be >= 0, got -1"):
        DecodingConfig.parse("repeat:token=-1")
    with pytest.raises(DecodingLimitError, match="repeat.token=301 is over the cap of 300"):
        DecodingLimits().check(DecodingConfig.parse("repeat:token=301"))


# ---------------------------------------------------------------------------- sampling warpers
def test_warpers_match_transformers():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=generator) * 3
    ours = warp_logits(logits, temperature=0.7, top_k=10, top_p=0.8)
    theirs = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, TemperatureLogitsWarper(0.7)(None, logits.clone())))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])
    assert 1 <= int((~torch.isinf(ours)).sum(-1).min()) and int((~torch.isinf(ours)).sum(-1).max()) <= 10


# ---------------------------------------------------------------------------- VCD
def test_vcd_noise_schedule_and_noising():
    alpha_bar = noise_schedule_alpha_bar()
    assert alpha_bar.shape == (1000,) and bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    # VCD's schedule by hand at t = 500: betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    betas = [1 / (1 + math.exp(-(-6 + 12 * i / 999))) * (0.5e-2 - 1e-5) + 1e-5 for i in range(501)]
    assert math.isclose(float(alpha_bar[500]), math.prod(1 - b for b in betas), rel_tol=1e-9)
    pixels = torch.randn(2, 3, 8, 8)
    noisy = add_diffusion_noise(pixels, 500, torch.Generator().manual_seed(1))
    noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(1))
    expected = math.sqrt(alpha_bar[500]) * pixels + math.sqrt(1 - alpha_bar[500]) * noise
    assert torch.allclose(noisy, expected, atol=1e-6)
    late = add_diffusion_noise(torch.full((1, 3, 64, 64), 5.0), 999, torch.Generator().manual_seed(2))
    assert abs(float(late.mean()) - 5.0 * math.sqrt(alpha_bar[999])) < 0.1  # mostly noise by the last step


def test_contrastive_logits_formula_and_plausibility():
    clean = torch.tensor([[2.0, 1.9, -1.0, -5.0]])
    distorted = torch.tensor([[2.5, 0.0, 0.0, -9.0]])
    out = contrastive_logits(clean, distorted, alpha=1.0, beta=0.1)
    # p >= 0.1 * max p  <=>  logit >= max logit + log 0.1 = 2 - 2.303: tokens 0 and 1 only.
    assert torch.allclose(out[0, :2], torch.tensor([1.5, 3.8]))
    assert torch.isinf(out[0, 2:]).all()
    assert int(out.argmax()) == 1 and int(clean.argmax()) == 0
    assert torch.equal(contrastive_logits(clean, distorted, alpha=0.0, beta=0.0), clean)


def test_vcd_with_alpha_zero_is_greedy(engine, mixed_requests):
    greedy = engine.generate(mixed_requests, DecodingConfig(max_new_tokens=MAX_NEW))
    vcd = engine.generate(mixed_requests, DecodingConfig.parse("vcd:alpha=0", max_new_tokens=MAX_NEW))
    assert [r.token_ids for r in vcd] == [r.token_ids for r in greedy]


def test_vcd_sampling_with_alpha_and_beta_zero_is_sampling(engine, mixed_requests):
    sample = engine.generate(mixed_requests, DecodingConfig.parse("sample:seed=5", max_new_tokens=MAX_NEW))
    vcd = engine.generate(mixed_requests, DecodingConfig.parse("vcd:alpha=0,beta=0,base=sample,seed=5", max_new_tokens=MAX_NEW))
    assert [r.token_ids for r in vcd] == [r.token_ids for r in sample]


def test_vcd_changes_answers_and_batches(sharp_engine, mixed_requests):
    greedy = sharp_engine.generate(mixed_requests, DecodingConfig(max_new_tokens=MAX_NEW))
    config = DecodingConfig.parse("vcd", max_new_tokens=MAX_NEW)
    vcd = sharp_engine.generate(mixed_requests, config)
    with_images = [i for i, request in enumerate(mixed_requests) if request.images]
    assert any(vcd[i].token_ids != greedy[i].token_ids for i in with_images)
    for i, request in enumerate(mixed_requests):
        if not request.images:  # nothing to contrast: the base strategy
            assert vcd[i].token_ids == greedy[i].token_ids
    alone = [sharp_engine.generate([request], config)[0] for request in mixed_requests]
    assert [r.token_ids for r in alone] == [r.token_ids for r in vcd]


# ---------------------------------------------------------------------------- OPERA
def naive_phi(window: torch.Tensor, candidate_row: torch.Tensor, scale: float) -> list[float]:
    """The reference's loop: attn_local[..., j:, j].prod() * 1e-7 over the window with the candidate row."""
    size = window.shape[0] + 1
    full = torch.zeros(size, size, dtype=torch.float64)
    full[:-1, :-1] = window
    full[-1] = candidate_row
    full = scale * full
    return [min(1e-7 * float(full[j:, j].prod()), PHI_CEILING) for j in range(size)]


def test_over_trust_scores_match_the_column_products():
    generator = torch.Generator().manual_seed(3)
    window = torch.rand(2, 4, 4, generator=generator).tril()
    window = window / window.sum(-1, keepdim=True)
    candidates = torch.rand(2, 3, 5, generator=generator)
    candidates = candidates / candidates.sum(-1, keepdim=True)
    phi = over_trust_scores(window, candidates, scale=50.0)
    for beam in range(2):
        for candidate in range(3):
            expected = naive_phi(window[beam].double(), candidates[beam, candidate].double(), 50.0)
            assert torch.allclose(phi[beam, candidate].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4)
    # A summary token: every later token attends almost only to token 1 -> phi peaks at column 1 and saturates.
    summary = torch.zeros(1, 20, 20)
    summary[0, 0, 0] = 1
    summary[0, 1:, 1] = 0.95
    summary[0, 1:, 0] = 0.05
    candidate = torch.zeros(1, 1, 21)
    candidate[0, 0, 1] = 1.0
    phi = over_trust_scores(summary, candidate, scale=50.0)
    assert int(phi[0, 0].argmax()) == 1 and float(phi[0, 0, 1]) == PHI_CEILING


def test_candidate_scores_weight_zero_is_log_probability():
    log_probs = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]), -1)[:, :3]
    penalty = torch.tensor([[5.0, 0.0, 1.0]])
    assert torch.allclose(candidate_scores(log_probs, penalty, 0.0), log_probs)
    penalised = candidate_scores(log_probs, penalty, 1.0)
    assert int(penalised.argmax()) == 1  # the heavily penalised best token loses
    # The candidates keep the probability mass the model gave them.
    assert torch.allclose(torch.logsumexp(penalised, -1), torch.logsumexp(log_probs, -1))


@pytest.mark.parametrize("fixture", ["engine", "sharp_engine"])
def test_opera_without_penalty_and_rollback_is_beam_search(fixture, request, mixed_requests):
    engine = request.getfixturevalue(fixture)
    beam = engine.generate(mixed_requests, DecodingConfig.parse("beam:num_beams=3", max_new_tokens=MAX_NEW))
    opera = engine.generate(mixed_requests, DecodingConfig.parse("opera:num_beams=3,penalty_weight=0,rollback=off",
                                                                 max_new_tokens=MAX_NEW))
    assert [r.token_ids for r in opera] == [r.token_ids for r in beam]
    assert engine.model.config.text_config._attn_implementation != "eager"  # switched back afterwards


def test_opera_changes_answers(sharp_engine, mixed_requests):
    beam = sharp_engine.generate(mixed_requests, DecodingConfig.parse("beam", max_new_tokens=MAX_NEW))
    opera = sharp_engine.generate(mixed_requests, DecodingConfig.parse("opera", max_new_tokens=MAX_NEW))
    assert sum(o.token_ids != b.token_ids for o, b in zip(opera, beam)) >= 2


class SummaryTokenRunner:
    """Builds a ModelRunner whose captured last-layer attention shows a summary token.

    Every query row that can see generated token `summary_position` gives it 0.9 of the attention
    (the rest scaled by 0.1): the knowledge-aggregation pattern OPERA looks for. A random tiny model
    attends almost only to its prompt, so the newest column always carries the largest phi and the
    summary position moves every step; retrospection never triggers without such a pattern. The
    logits stay the model's own.
    """

    @staticmethod
    def build(model, summary_key: int):
        from crystalvlm.infer.runner import ModelRunner

        class Runner(ModelRunner):
            @property
            def last_attention(self):  # (R, heads, q, T)
                return self._attention

            @last_attention.setter
            def last_attention(self, weights):
                if weights is not None and weights.shape[-1] > summary_key + 1:
                    weights = weights.clone()
                    weights[:, :, -1, :] *= 0.1
                    weights[:, :, -1, summary_key] += 0.9
                self._attention = weights

        return Runner(model)


def run_opera_search(engine, request, config, summary_position: int | None = None):
    from crystalvlm.infer.decoding.beam import BeamSearchState
    from crystalvlm.infer.decoding.greedy_sampling import RowControl
    from crystalvlm.infer.prompts import collate
    from crystalvlm.infer.runner import ModelRunner

    batch = collate([engine.prepare(request)], engine.pad_token_id)
    if summary_position is None:
        runner = ModelRunner(engine.model)
    else:
        runner = SummaryTokenRunner.build(engine.model, batch.input_ids.shape[1] + summary_position)
    state = BeamSearchState(config.num_beams, config.length_penalty, 1, lambda ids: False)
    search = OperaSearch(runner, config.opera, state, batch.input_ids[0] == engine.image_token_id,
                         config.max_new_tokens, RowControl())
    with torch.no_grad():
        search.run(batch)
    return search


def test_opera_rolls_back_and_excludes_earlier_choices(engine, mixed_requests):
    summary = 4
    config = DecodingConfig.parse("opera:num_beams=3,threshold=2,warmup=2,max_rollbacks=2", max_new_tokens=12)
    search = run_opera_search(engine, mixed_requests[0], config, summary_position=summary)
    # Token 4 is the max-phi column in every beam from step 5 on; once it was so more than twice, the search
    # goes back to re-choose token 5 (twice, the limit), then token 4 (twice), then decodes on to the end.
    assert search._rollbacks_at == {summary + 1: 2, summary: 2}
    assert search.rollbacks_done == 4
    assert list(search._rejected) == [summary]  # rejections after the latest rollback position are forgotten
    assert len(search._rejected[summary]) == 2 * config.num_beams  # two rollbacks, each rejecting B choices
    chosen = set(zip(*search._history[summary].chosen))
    assert not chosen & set(search._rejected[summary]), "a rejected (beam, token) was chosen again"
    assert len(search._history) == config.max_new_tokens  # it still decoded to the length limit
    best = search.state.best().token_ids
    assert len(best) == config.max_new_tokens

    no_retrospection = run_opera_search(engine, mixed_requests[0], config.with_changes(
        opera=replace(config.opera, rollback=False)), summary_position=summary)
    assert no_retrospection.rollbacks_done == 0 and not no_retrospection._rejected
    assert no_retrospection.state.best().token_ids != best  # the rollbacks changed the answer
    no_budget = run_opera_search(engine, mixed_requests[0], config.with_changes(
        opera=replace(config.opera, max_rollbacks=0)), summary_position=summary)
    assert no_budget.rollbacks_done == 0
    assert no_budget.state.best().token_ids == no_retrospection.state.best().token_ids
    # A summary token inside the warm-up span is never a rollback target.
    in_warmup = run_opera_search(engine, mixed_requests[0], config.with_changes(
        opera=replace(config.opera, warmup=summary + 1)), summary_position=summary)
    assert in_warmup.rollbacks_done == 0


def test_opera_without_summary_token_does_not_roll_back(engine, mixed_requests):
    """With the model's own attention, phi peaks at the newest column: no position repeats, nothing rolls back."""
    config = DecodingConfig.parse("opera:num_beams=3,threshold=2,warmup=2,max_rollbacks=2", max_new_tokens=8)
    search = run_opera_search(engine, mixed_requests[0], config)
    summaries = torch.stack([record.summary_positions for record in search._history], dim=1)  # (B, steps)
    newest = torch.arange(summaries.shape[1])
    assert float((summaries == newest).float().mean()) > 0.7
    assert search.rollbacks_done == 0
