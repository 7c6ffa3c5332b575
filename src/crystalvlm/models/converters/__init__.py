"""Converters from released checkpoints in their original layouts to HF-native Llava folders.

One file per source kind: `llava` (liuhaotian's LLaVA-1.5), `crystalchat` (CrystalChat-7B-MLLM),
and `crystalcoder` (the remote-code LLM folded onto a native class, also used when a recipe
composes it). `converters()` maps the kind a user types (`crystalvlm convert KIND`) to its function
`(source, out, vision_tower=None, chat_template=None) -> Path`; `TEMPLATES` names the crystalvlm
template each converted model was trained with. Submodules are imported on use: `models.build`
imports `crystalcoder`, and the converters import `models.build`.
"""

from __future__ import annotations

from typing import Callable

TEMPLATES = {"llava": "vicuna_v1", "crystalchat": "crystalchat"}


def converters() -> dict[str, Callable]:
    from crystalvlm.models.converters.crystalchat import convert_crystalchat
    from crystalvlm.models.converters.llava import convert_llava

    return {"llava": convert_llava, "crystalchat": convert_crystalchat}
