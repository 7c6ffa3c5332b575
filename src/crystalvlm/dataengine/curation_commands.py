"""`crystalvlm data parrot` and `crystalvlm data caption`: argument parsing and wiring.

    crystalvlm data parrot pairs.jsonl --out curated.jsonl --image-folder images --reader easyocr
    crystalvlm data parrot pairs.jsonl --out curated.jsonl --spotted-key ocr --threshold 0.5 --mode rewrite
    crystalvlm data caption images.jsonl --out captioned.jsonl --model CAPTIONER --image-folder images
    crystalvlm data caption images.jsonl --out captioned.jsonl --model BASE --train detailed.json \\
        --train-image-folder images --train-steps 300 --image-folder images

Both write the kept records to OUT, every removed record with its `reason` to OUT.removed.jsonl,
an HTML report to OUT.report.html, resume an interrupted run, and print a JSON summary last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _add_stream_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("input", help="JSON lines, one record per line")
    parser.add_argument("--out", required=True, help="kept records (JSON lines); removed ones go to OUT.removed.jsonl")
    parser.add_argument("--image-folder", help="the folder the records' image paths are relative to (default: here)")
    parser.add_argument("--image-key", default="image", help="the record field holding the image path")
    parser.add_argument("--caption-key", default="caption", help="the record field holding the caption")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each loads its own model)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="records per batch (one model call)")
    parser.add_argument("--commit-every", type=int, default=2000, help="records between resume points")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _write_report(summary: dict, out: Path, title: str, figures: dict) -> None:
    """OUT.report.html: removals by reason (the curation commands' page) and the step's own figures."""
    from crystalvlm.data.curation.commands import _report

    def add_figures(page) -> None:
        page.heading("Figures")
        page.table(["figure", "value"], [[key, json.dumps(value) if isinstance(value, (dict, list)) else value]
                                          for key, value in figures.items()])

    summary["report"] = str(_report(summary, out, title, add_figures))


def _folder(value: str | None, what: str) -> Path | None:
    if value is None:
        return None
    if not Path(value).is_dir():
        raise ValueError(f"{what} {value}: no such folder")
    return Path(value)


def run_parrot(args: argparse.Namespace) -> int:
    from crystalvlm.data.curation.stream import run_stream
    from crystalvlm.dataengine.parrot import ParrotSettings
    from crystalvlm.dataengine.steps import ParrotStep

    settings = ParrotSettings(threshold=args.threshold, mode=args.mode, caption_key=args.caption_key,
                              image_key=args.image_key, spotted_key=args.spotted_key,
                              annotate_key=args.annotate_key, image_folder=_folder(args.image_folder, "--image-folder"))
    if args.reader and args.spotted_key:
        raise ValueError("give --reader or --spotted-key, not both")
    step = ParrotStep(settings, args.reader, args.reader_model)
    summary = run_stream(Path(args.input), Path(args.out), step, workers=args.workers, batch_size=args.batch_size,
                         commit_every=args.commit_every, progress=not args.quiet)
    _write_report(summary, Path(args.out), f"data parrot: {Path(args.input).name}", summary["parrot"])
    print(json.dumps(summary, indent=2))
    return 0


def run_caption(args: argparse.Namespace) -> int:
    from crystalvlm.data.curation.stream import run_stream
    from crystalvlm.dataengine.captioner import CaptionSettings, train_captioner
    from crystalvlm.dataengine.steps import CaptionStep

    if not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model}: no such checkpoint folder")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    image_folder = _folder(args.image_folder, "--image-folder")
    model = Path(args.model)
    trained = None
    if args.train:
        if not Path(args.train).is_file():
            raise ValueError(f"--train {args.train}: no such data file")
        train_out = Path(args.train_out) if args.train_out else Path(args.out).with_name(Path(args.out).name + ".captioner")
        model = train_captioner(model, Path(args.train), _folder(args.train_image_folder, "--train-image-folder"),
                                train_out, steps=args.train_steps, batch_size=args.train_batch_size, lr=args.train_lr,
                                progress=not args.quiet)
        trained = str(model)
    settings = CaptionSettings(prompt=args.prompt, max_new_tokens=args.max_new_tokens, image_key=args.image_key,
                               caption_key=args.caption_key, image_folder=image_folder, decoding=args.decoding)
    step = CaptionStep(model, settings, batch_size=args.batch_size)
    summary = run_stream(Path(args.input), Path(args.out), step, workers=args.workers, batch_size=args.batch_size,
                         commit_every=args.commit_every, progress=not args.quiet)
    if trained:
        summary["caption"]["trained_captioner"] = trained
    _write_report(summary, Path(args.out), f"data caption: {Path(args.input).name}", summary["caption"])
    print(json.dumps(summary, indent=2))
    return 0


def add_data_subcommands(data_subparsers) -> None:
    """`data parrot` and `data caption` under `crystalvlm data`."""
    from crystalvlm.dataengine.captioner import DEFAULT_PROMPT

    parrot = data_subparsers.add_parser(
        "parrot", help="score captions that spell their image's visible text (co-emb text rate); filter or rewrite them")
    _add_stream_arguments(parrot, batch_size=64)
    source = parrot.add_argument_group("where the image's visible text comes from (one of)")
    source.add_argument("--reader", help="a text reader run on each image: 'easyocr' or package.module:factory")
    source.add_argument("--reader-model", help="passed to the reader's factory (a model folder)")
    source.add_argument("--spotted-key", help="take the visible text from this record field (a string or a list)")
    parrot.add_argument("--threshold", type=float, default=0.5,
                        help="a caption whose co-emb text rate is at least this is a parrot caption")
    parrot.add_argument("--mode", choices=["score", "remove", "rewrite"], default="remove",
                        help="what to do with parrot captions: only score, drop, or take the spotted words out")
    parrot.add_argument("--annotate-key", default="parrot",
                        help="kept records get their rate and spotted words here ('' keeps them unchanged)")
    parrot.set_defaults(func=run_parrot)

    caption = data_subparsers.add_parser(
        "caption", help="caption images with a (trained) captioner through the batched engine")
    _add_stream_arguments(caption, batch_size=32)
    caption.add_argument("--model", required=True,
                         help="the captioner checkpoint, or with --train the checkpoint the captioner is trained from")
    caption.add_argument("--prompt", default=DEFAULT_PROMPT, help="the instruction given with each image")
    caption.add_argument("--max-new-tokens", type=int, default=128, help="most tokens per caption")
    caption.add_argument("--decoding", default="greedy", help="greedy | beam:num_beams=3 | sample:temperature=0.7,seed=1")
    caption.add_argument("--train", help="first train the captioner on these detailed captions (LLaVA-format JSON)")
    caption.add_argument("--train-image-folder", help="the image folder of --train")
    caption.add_argument("--train-steps", type=int, default=300, help="captioner training steps")
    caption.add_argument("--train-batch-size", type=int, default=16, help="captioner training batch size")
    caption.add_argument("--train-lr", type=float, default=1e-3, help="captioner learning rate (projector and LLM)")
    caption.add_argument("--train-out", help="where the captioner is trained (default: OUT.captioner)")
    caption.set_defaults(func=run_caption)
