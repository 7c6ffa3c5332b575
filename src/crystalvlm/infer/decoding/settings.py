"""A decoding setting declared once: its type, default, allowed range and the cap a server puts on it.

Settings are fields of frozen dataclasses (`DecodingConfig`'s common ones, each strategy's own
`params_type`) made with `setting(...)`. From that one declaration

* `convert_setting` turns the text of `key=value` into the field's type,
* `range_problems` refuses values outside the allowed range (every float must also be finite: "nan"
  and "inf" parse as floats but pass no comparison),
* `DecodingLimits` (limits.py) takes `server_cap` as the default highest value a server accepts.

The range is what makes sense at all (a library user may run 32 beams); the cap is what a shared
server is willing to spend on one request's behalf.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

Number = int | float


class DecodingConfigError(ValueError):
    """A decoding string or setting that cannot be used; the message says which part and why."""


def setting(default: Any, *, low: Number | None = None, above: Number | None = None, high: Number | None = None,
            choices: tuple | None = None, server_cap: Number | None = None) -> Any:
    """A dataclass field with its allowed range: `low` <= value, `above` < value, value <= `high`,
    or one of `choices`; `server_cap`: the default cap of DecodingLimits (None: a server does not cap it)."""
    bounds = {"low": low, "above": above, "high": high, "choices": choices, "server_cap": server_cap}
    return dataclasses.field(default=default, metadata=bounds)


def declared_fields(settings_type: type) -> dict[str, dataclasses.Field]:
    return {field.name: field for field in dataclasses.fields(settings_type)}


def server_cap(field: dataclasses.Field) -> Number | None:
    return field.metadata.get("server_cap")


def range_problems(settings: Any, names: list[str], label: str = "") -> list[str]:
    """Why each of the fields `names` of `settings` is out of its declared range ([] when all are fine).

    `label` goes in front of the names ("opera " -> "opera num_candidates must be >= 1, got 0").
    """
    problems = []
    fields = declared_fields(type(settings))
    for name in names:
        value = getattr(settings, name)
        problem = _range_problem(fields[name].metadata, value)
        if problem:
            problems.append(f"{label}{name} {problem}, got {value!r}")
    return problems


def _range_problem(bounds: Any, value: Any) -> str | None:
    if value is None or isinstance(value, (bool, str)):
        choices = bounds.get("choices")
        if choices is not None and value not in choices:
            return f"must be one of {choices}"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    low, above, high = bounds.get("low"), bounds.get("above"), bounds.get("high")
    too_low = (low is not None and value < low) or (above is not None and value <= above)
    too_high = high is not None and value > high
    if not (too_low or too_high):
        return None
    if high is None:
        return f"must be >= {low}" if low is not None else f"must be > {above}"
    if low is None and above is None:
        return f"must be <= {high}"
    return f"must be in [{low}, {high}]" if low is not None else f"must be in ({above}, {high}]"


def convert_setting(field: dataclasses.Field, raw: str, text: str) -> Any:
    """The value of `key=raw` as the field's type; `text` (the whole decoding string) goes in errors."""
    kind = str(field.type)  # a string: modules declaring settings use `from __future__ import annotations`
    try:
        if "bool" in kind:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "int" in kind and "None" in kind:  # seed: int | None
            return None if raw.lower() in ("none", "") else int(raw)
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        return raw
    except ValueError:
        raise DecodingConfigError(f"setting {field.name}={raw!r} in {text!r} is not a valid {kind}") from None
