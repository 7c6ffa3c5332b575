"""Which decoding strategy to run and with what settings, written as one short string.

`DecodingConfig.parse("beam:num_beams=3")`, `parse("opera")`, `parse("vcd:alpha=1,beta=0.1,base=greedy")`,
`parse("sample:temperature=0.7,top_p=0.9,seed=1")`. The strategy is looked up by exact name in
registry.py. A key is looked up first among the strategy's own settings (its `params_type`: OPERA's,
VCD's), then among the common ones (max_new_tokens, temperature, ...). Unknown keys, bad values,
values out of range and keys of another strategy are refused with a message naming them.

Defaults follow the methods' published settings: OPERA (Huang et al. 2023, shikiw/OPERA) uses 5 beams,
5 candidates per beam, scale factor 50, penalty weight 1, rollback threshold 15; VCD (Leng et al. 2023,
DAMO-NLP-SG/VCD) uses alpha 1, beta 0.1 and 500 of 1000 diffusion noise steps.

How much of these a request may ask of a server is capped apart, by `DecodingLimits` (limits.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from crystalvlm.infer.decoding.registry import STRATEGIES, build_strategy, strategy_class
from crystalvlm.infer.decoding.settings import (
    DecodingConfigError,
    convert_setting,
    declared_fields,
    range_problems,
    setting,
    server_cap,
)
from crystalvlm.infer.decoding.strategy import DecodingStrategy

__all__ = ["DecodingConfig", "DecodingConfigError"]

# torch.Generator.manual_seed accepts these (it reads a seed as a signed or unsigned 64-bit integer).
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True)
class DecodingConfig:
    strategy: str = "greedy"
    max_new_tokens: int = setting(64, low=1)
    temperature: float = setting(1.0, above=0)
    top_p: float = setting(1.0, above=0, high=1)
    top_k: int = setting(0, low=0)  # 0: no top-k cut
    seed: int | None = setting(None, low=SEED_RANGE[0], high=SEED_RANGE[1])  # sampling (and VCD's noise) reproducible per request
    num_beams: int = setting(5, low=1, server_cap=8)  # beam and OPERA
    length_penalty: float = setting(1.0)  # beam and OPERA: finished scores are divided by length ** this
    # The strategy's own settings: an instance of its `params_type` (OperaParams, VcdParams), or None for a
    # strategy without any. Left None for a strategy that has some, its defaults are filled in.
    params: Any = None

    def __post_init__(self) -> None:
        if self.params is None and self.strategy in STRATEGIES:
            object.__setattr__(self, "params", strategy_class(self.strategy).default_params())
        self.validate()

    def __getattr__(self, name: str) -> Any:
        # The strategy's own settings are also reachable under its name: `config.opera.num_candidates`.
        state = self.__dict__
        if name == state.get("strategy") and state.get("params") is not None:
            return state["params"]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        else:
            problems += strategy_class(self.strategy).params_problems(self.params)
        problems += range_problems(self, common_setting_names())
        if problems:
            raise DecodingConfigError("; ".join(problems))

    @property
    def strategy_type(self) -> type[DecodingStrategy]:
        """The registered class of `strategy`."""
        return strategy_class(self.strategy)

    @property
    def samples(self) -> bool:
        """Whether tokens are drawn at random (and `seed` matters)."""
        return build_strategy(self).samples

    # ------------------------------------------------------------------ text form
    @classmethod
    def parse(cls, text: str, **overrides: Any) -> "DecodingConfig":
        """'strategy' or 'strategy:key=value,key=value'; `overrides` set common fields (max_new_tokens=...)
        that the string does not set."""
        text = (text or "").strip()
        if not text:
            raise DecodingConfigError("empty decoding string; expected e.g. 'greedy' or 'beam:num_beams=3'")
        name, _, settings = text.partition(":")
        name = name.strip().lower()
        if name not in STRATEGIES:
            raise DecodingConfigError(f"unknown strategy {name!r} in {text!r}; choose one of {', '.join(STRATEGIES)}")
        strategy = strategy_class(name)
        own_names = strategy.own_setting_names()
        common_fields = {key: field for key, field in declared_fields(cls).items() if key in common_setting_names()}
        common: dict[str, Any] = dict(overrides)
        own: dict[str, str] = {}
        for item in filter(None, (piece.strip() for piece in settings.split(","))):
            key, equals, raw = item.partition("=")
            key = key.strip()
            if not equals:
                raise DecodingConfigError(f"setting {item!r} in {text!r} is not key=value")
            if key in own_names:
                own[key] = raw.strip()
            elif key in common_fields:
                common[key] = convert_setting(common_fields[key], raw.strip(), text)
            else:
                allowed = sorted(own_names) + sorted(common_fields)
                raise DecodingConfigError(f"unknown setting {key!r} for {name!r} in {text!r}; allowed: {', '.join(allowed)}")
        return cls(strategy=name, params=strategy.parse_params(own, text), **common)

    def describe(self) -> str:
        """The canonical text form: the strategy and every setting that differs from the default."""
        parts = []
        if self.params is not None:
            default = self.strategy_type.default_params()
            parts += [f"{f.name}={getattr(self.params, f.name)}" for f in fields(self.params)
                      if getattr(self.params, f.name) != getattr(default, f.name)]
        default_config = DecodingConfig()
        parts += [f"{name}={getattr(self, name)}" for name in common_setting_names()
                  if getattr(self, name) != getattr(default_config, name)]
        return self.strategy + (":" + ",".join(parts) if parts else "")

    def with_changes(self, **changes: Any) -> "DecodingConfig":
        """A copy with `changes`; the strategy's own settings may be given under its name (`opera=...`)."""
        if self.strategy in changes and self.strategy not in common_setting_names():
            changes["params"] = changes.pop(self.strategy)
        return replace(self, **changes)


def common_setting_names() -> list[str]:
    """The settings every strategy's string may carry (those of DecodingConfig but strategy and params)."""
    return [field.name for field in fields(DecodingConfig) if field.name not in ("strategy", "params")]


def common_server_caps() -> dict[str, int | float]:
    """The common settings a server caps by default, with their caps."""
    return {name: cap for name, field in declared_fields(DecodingConfig).items() if (cap := server_cap(field)) is not None}
