"""Caps a server puts on decoding settings, which no request's decoding string can raise.

A request picks its strategy and settings (`"decoding": "beam:num_beams=3"`), and the engine runs it
holding the model's lock: without caps one request could ask for 4096 beams, 4000 new tokens past the
checked `max_tokens`, or a billion OPERA rollbacks, and every other client would wait on it.

    limits = DecodingLimits(max_new_tokens=256, caps={"num_beams": 4, "opera.max_rollbacks": 2})
    limits.check(config)   # DecodingLimitError naming the setting, its value and the cap

Which settings are capped, and at what by default, is declared with the settings themselves
(`server_cap` in `settings.setting`): `num_beams`, and each strategy's costly own settings such as
`opera.num_candidates`. A cap on a common setting applies to the strategies that use it
(`DecodingStrategy.uses`): greedy decoding is not refused for the beam count it never reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from crystalvlm.infer.decoding.config import DecodingConfig, common_server_caps
from crystalvlm.infer.decoding.registry import STRATEGIES
from crystalvlm.infer.decoding.settings import DecodingConfigError, Number, declared_fields, server_cap


class DecodingLimitError(DecodingConfigError):
    """A decoding setting over a server's cap."""

    def __init__(self, key: str, value: Number, cap: Number) -> None:
        super().__init__(f"decoding setting {key}={value} is over the cap of {cap}")
        self.key = key
        self.value = value
        self.cap = cap


def default_caps() -> dict[str, Number]:
    """Every capped setting with its default cap: common ones by name, a strategy's own as 'strategy.name'."""
    caps = dict(common_server_caps())
    for name, strategy in STRATEGIES.items():
        if strategy.params_type is None:
            continue
        for key, declared in declared_fields(strategy.params_type).items():
            if (cap := server_cap(declared)) is not None:
                caps[f"{name}.{key}"] = cap
    return caps


@dataclass(frozen=True)
class DecodingLimits:
    max_new_tokens: int = 1024  # new tokens one request may ask for
    # Caps replacing the declared defaults (`default_caps()`), keyed as there: {"num_beams": 4, "opera.history": 256}.
    caps: Mapping[str, Number] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = default_caps()
        unknown = sorted(set(self.caps) - set(known))
        if unknown:
            raise ValueError(f"no decoding setting is capped as {', '.join(unknown)}; capped settings: {', '.join(known)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def effective_caps(self) -> dict[str, Number]:
        return {**default_caps(), **self.caps}

    def check(self, config: DecodingConfig) -> None:
        """DecodingLimitError for the first setting of `config` over its cap."""
        if config.max_new_tokens > self.max_new_tokens:
            raise DecodingLimitError("max_new_tokens", config.max_new_tokens, self.max_new_tokens)
        strategy = config.strategy_type
        for key, cap in self.effective_caps.items():
            owner, dot, name = key.rpartition(".")
            if dot and owner != strategy.name:
                continue
            if not dot and name not in strategy.uses:
                continue
            value = getattr(config.params if dot else config, name)
            if value > cap:
                raise DecodingLimitError(key, value, cap)
