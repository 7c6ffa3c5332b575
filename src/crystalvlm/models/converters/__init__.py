"""Converters from released checkpoints in their original layouts to HF-native Llava folders.

One file per source kind; `CONVERTERS` maps the kind a user types (`crystalvlm convert KIND`) to
its function `(source, out, vision_tower=None, chat_template=None) -> Path`, and `TEMPLATES` to
the crystalvlm template the converted model was trained with.
"""

from __future__ import annotations

from crystalvlm.models.converters import crystalchat, llava

CONVERTERS = {"llava": llava.convert_llava, "crystalchat": crystalchat.convert_crystalchat}
TEMPLATES = {"llava": llava.TEMPLATE, "crystalchat": crystalchat.TEMPLATE}
