"""`crystalvlm convert KIND SRC --out DST`: a released checkpoint in its original layout as a
Hugging Face native Llava folder (see models/converters/).

    crystalvlm convert llava liuhaotian/llava-v1.5-7b --out checkpoints/llava-v1.5-7b-hf
    crystalvlm convert crystalchat LLM360/CrystalChat-7B-MLLM --out checkpoints/crystalchat-mllm-hf

SRC is a folder or a Hub id already in the Hugging Face cache (`hf download ID` first: nothing is
downloaded here). The vision tower comes from the source's `mm_vision_tower` (a folder or a cached
Hub id) unless --vision-tower names it. A source of the wrong kind or a tower that cannot be found
is refused with the reason, and nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def add_convert_subcommand(sub, chat_template_for: Callable[[str], str]) -> None:
    """Register `convert`; `chat_template_for(template name)` renders a template's Jinja form
    (templates live in `data`, which `models` does not import)."""
    from crystalvlm.models.converters import TEMPLATES

    parser = sub.add_parser("convert", help="convert a released checkpoint (original layout) to a native HF Llava",
                            description=__doc__)
    parser.add_argument("kind", choices=sorted(TEMPLATES), help="the source's layout")
    parser.add_argument("source", help="the source checkpoint: a folder or a cached Hub id")
    parser.add_argument("--out", required=True, help="folder to write the converted checkpoint into (atomically)")
    parser.add_argument("--vision-tower", default=None,
                        help="the CLIP tower's folder or cached Hub id (default: the source's mm_vision_tower)")
    parser.set_defaults(func=lambda args: run_convert(args, chat_template_for))


def run_convert(args: argparse.Namespace, chat_template_for: Callable[[str], str]) -> int:
    from crystalvlm.models.checkpoint import ModelNotFoundError, resolve_model
    from crystalvlm.models.converters import TEMPLATES, converters
    from crystalvlm.models.converters.original_layout import ConversionError

    source = Path(args.source)
    if not source.exists():
        try:
            source = resolve_model(args.source)
        except ModelNotFoundError as error:
            raise ConversionError(str(error)) from None
    out = converters()[args.kind](source, Path(args.out), vision_tower=args.vision_tower,
                                chat_template=chat_template_for(TEMPLATES[args.kind]))
    print(f"converted {args.kind} checkpoint {args.source} -> {out}")
    return 0
