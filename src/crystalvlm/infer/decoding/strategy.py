"""What a decoding strategy is to the engine: a named class with its own settings and one `decode` call.

    class Greedy(DecodingStrategy):
        name = "greedy"
        def decode(self, context, batch, controls): ...

and one line in registry.py. The engine asks a strategy only what it declares here — how many
requests it decodes at once, whether a shared-prefix prefill suits it, whether it draws at random —
and never branches on its name.

A strategy is built per generation from its `DecodingConfig` (`registry.build_strategy(config)`);
its own settings, if any, are `config.params`, an instance of its `params_type` (a frozen dataclass
of `settings.setting` fields: parsed from `name:key=value`, range-checked, capped by a server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from crystalvlm.infer.decoding.settings import DecodingConfigError, convert_setting, declared_fields, range_problems

if TYPE_CHECKING:
    from crystalvlm.infer.decoding.config import DecodingConfig
    from crystalvlm.infer.decoding.greedy_sampling import RowControl
    from crystalvlm.infer.runner import ModelRunner, PromptBatch
    from crystalvlm.infer.text_stream import AnswerText

# The common settings of DecodingConfig, grouped by what uses them (a strategy lists the groups it reads).
LENGTH = frozenset({"max_new_tokens"})
SAMPLING = frozenset({"temperature", "top_p", "top_k", "seed"})
BEAMS = frozenset({"num_beams", "length_penalty"})


@dataclass
class DecodingContext:
    """What a strategy needs from the engine besides the batch."""

    runner: ModelRunner  # forward passes over the batch's rows, with their KV cache
    tokenizer: Any  # turns token ids into answer text (and finds stop strings)
    image_token_id: int  # the id image tokens carry in `input_ids` (OPERA rewards attention to them)
    eos_count: int  # how many ids end an answer: beam search keeps max(2, 1 + eos_count) * B candidates


class DecodingStrategy:
    name: ClassVar[str]
    params_type: ClassVar[type | None] = None  # dataclass of the strategy's own settings (None: it has none)
    uses: ClassVar[frozenset[str]] = LENGTH  # the common DecodingConfig settings it reads (server caps apply to these)
    shares_prefixes: ClassVar[bool] = True  # its prefill may compute prompt prefixes shared in a batch once
    one_request_at_a_time: ClassVar[bool] = False  # True: every batch holds a single request

    def __init__(self, config: DecodingConfig) -> None:
        self.config = config

    @property
    def params(self) -> Any:
        return self.config.params

    @property
    def samples(self) -> bool:
        """Whether tokens are drawn at random (each request then gets its own seeded generator)."""
        return False

    def decode(self, context: DecodingContext, batch: PromptBatch, controls: list[RowControl]) -> list[AnswerText]:
        """One answer per row of `batch`, in row order; `controls[i]` carries row i's listener,
        cancellation, random generator and stop rule."""
        raise NotImplementedError

    # ------------------------------------------------------------------ own settings
    @classmethod
    def parse_params(cls, settings: dict[str, str], text: str) -> Any:
        """The strategy's own settings from `key: raw value` pairs of a decoding string (`text`, for errors);
        None for a strategy without own settings. Ranges are checked later, by `params_problems`."""
        if cls.params_type is None:
            if settings:
                raise DecodingConfigError(f"{cls.name!r} has no settings of its own, got {', '.join(settings)}")
            return None
        fields = declared_fields(cls.params_type)
        return cls.params_type(**{key: convert_setting(fields[key], raw, text) for key, raw in settings.items()})

    @classmethod
    def own_setting_names(cls) -> list[str]:
        return list(declared_fields(cls.params_type)) if cls.params_type is not None else []

    @classmethod
    def default_params(cls) -> Any:
        return cls.params_type() if cls.params_type is not None else None

    @classmethod
    def params_problems(cls, params: Any) -> list[str]:
        """What is wrong with `params` as this strategy's own settings ([] when nothing)."""
        if cls.params_type is None:
            return [] if params is None else [f"{cls.name!r} has no settings of its own, got {params!r}"]
        if not isinstance(params, cls.params_type):
            return [f"{cls.name!r} wants its settings as {cls.params_type.__name__}, got {type(params).__name__}"]
        return range_problems(params, cls.own_setting_names(), label=f"{cls.name} ")
