"""Decoding strategies by exact name. Adding a strategy: its file (a `DecodingStrategy` subclass) and
one entry here; the decoding string, the engine, the server and its caps then know it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crystalvlm.infer.decoding.beam import BeamDecoding
from crystalvlm.infer.decoding.greedy import GreedyDecoding
from crystalvlm.infer.decoding.opera import OperaDecoding
from crystalvlm.infer.decoding.sample import SampleDecoding
from crystalvlm.infer.decoding.settings import DecodingConfigError
from crystalvlm.infer.decoding.strategy import DecodingStrategy
from crystalvlm.infer.decoding.vcd import VcdDecoding

if TYPE_CHECKING:
    from crystalvlm.infer.decoding.config import DecodingConfig

STRATEGIES: dict[str, type[DecodingStrategy]] = {
    strategy.name: strategy for strategy in (GreedyDecoding, SampleDecoding, BeamDecoding, OperaDecoding, VcdDecoding)
}


def strategy_class(name: str) -> type[DecodingStrategy]:
    """The strategy registered as exactly `name`; DecodingConfigError naming the known ones otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise DecodingConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None


def build_strategy(config: DecodingConfig) -> DecodingStrategy:
    return strategy_class(config.strategy)(config)
