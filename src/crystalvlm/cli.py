"""The `crystalvlm` command. Only this module imports every part of the package.

Subcommands import what they need when they run, so `crystalvlm --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


# ----------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from crystalvlm.data.dataset import DataSource
    from crystalvlm.train.recipe import apply_overrides, load_recipe, read_recipe
    from crystalvlm.train.trainer import BadDataError, TrainOptions, train_recipe
    from crystalvlm.worlds.registry import prepare_recipe_inputs, recipe_world

    run_dir = Path(args.out)
    # Everything the user typed is checked before any expensive work (world preparation, loading).
    raw = apply_overrides(read_recipe(args.recipe), args.set)
    recipe_world(raw)  # an unknown world is refused now, not after minutes
    placeholder = load_recipe(args.recipe, args.set, {"run_dir": str(run_dir), "world": str(run_dir / "world")})
    if args.stage:
        placeholder.stage(args.stage)
    from crystalvlm.train.adapters import refuse_impossible_adapters

    refuse_impossible_adapters(placeholder, [args.stage] if args.stage else None)  # e.g. QLoRA on a CPU
    if args.init_from:
        from crystalvlm.models.checkpoint import resolve_model

        resolve_model(args.init_from)  # a model not there (offline Hub id) is refused before world preparation
    if args.image_folder and not args.data:
        raise UsageError("--image-folder needs --data")
    if args.data:
        if not Path(args.data).is_file():
            raise UsageError(f"--data {args.data}: no such file")
        if args.image_folder and not Path(args.image_folder).is_dir():
            raise UsageError(f"--image-folder {args.image_folder}: no such folder")
    for name, value in (("--max-steps", args.max_steps), ("--save-every", args.save_every)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")

    variables = prepare_recipe_inputs(raw, run_dir, progress=not args.quiet)
    recipe = load_recipe(args.recipe, args.set, variables)
    options = TrainOptions(
        run_dir=run_dir,
        stages=[args.stage] if args.stage else None,
        data=DataSource(Path(args.data), Path(args.image_folder) if args.image_folder else None) if args.data else None,
        max_steps=args.max_steps,
        save_every=args.save_every,
        resume=args.resume,
        strict=args.strict,
        report_to=args.report_to or [],
        progress=not args.quiet,
        num_workers=args.num_workers,
        init_from=args.init_from,
        fsdp=args.fsdp,
    )
    try:
        results = train_recipe(recipe, options)
    except BadDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    for result in results:
        if result.final_loss is None:  # finished in an earlier run; --resume left it as it was
            print(f"stage {result.name}: already complete -> {result.checkpoint}")
            continue
        print(f"stage {result.name}: {result.steps} steps, final loss {result.final_loss:.4f}, "
              f"{len(result.problems)} bad record(s) skipped -> {result.checkpoint}")
    return 0


def _add_train(sub) -> None:
    parser = sub.add_parser("train", help="train a recipe's stages", formatter_class=HelpFormatter)
    parser.add_argument("recipe", help="a recipe YAML path or the name of a shipped recipe (tiny, tiny-web, llava-1.5-7b, ...)")
    parser.add_argument("--stage", help="run only this stage (it starts from the previous stage's final checkpoint)")
    parser.add_argument("--data", help="a data file replacing the stage's datasets")
    parser.add_argument("--image-folder", help="the image folder of --data")
    parser.add_argument("--out", default="runs/latest", help="run directory")
    parser.add_argument("--max-steps", type=int, help="stop each stage after this many optimiser steps")
    parser.add_argument("--save-every", type=int, help="write a resume checkpoint every N steps")
    parser.add_argument("--resume", action="store_true", help="continue from the latest resume checkpoint")
    parser.add_argument("--strict", action="store_true", help="refuse to train when any record is bad")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, checked against the recipe schema (repeatable)")
    parser.add_argument("--report-to", action="append", choices=["tensorboard", "wandb"],
                        help="also log to this tracker (needs the [track] extra; repeatable)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--init-from", metavar="MODEL", help="the first stage run starts from this full LLaVA model "
                        "(a checkpoint folder or a Hub id in the HF cache) instead of composing parts")
    parser.add_argument("--fsdp", action="store_true", help="fully shard the model over the processes of a "
                        "distributed launch (torchrun; CPUs too) with the FSDP2 plugin configs/accelerate/fsdp.yaml "
                        "describes; one process trains unsharded")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_train)


# ----------------------------------------------------------------------------- merge
def _cmd_merge(args: argparse.Namespace) -> int:
    from crystalvlm.train.adapters import merge_adapter

    out = merge_adapter(Path(args.adapter), Path(args.out))
    print(f"merged {args.adapter} into its base -> {out}")
    return 0


def _add_merge(sub) -> None:
    parser = sub.add_parser("merge", help="merge a kept LoRA adapter folder (lora.merge: false) into a plain checkpoint",
                            formatter_class=HelpFormatter)
    parser.add_argument("adapter", help="an adapter folder written by a stage with lora.merge: false")
    parser.add_argument("--out", required=True, help="the merged checkpoint folder (must not exist)")
    parser.set_defaults(func=_cmd_merge)


# ----------------------------------------------------------------------------- data
def _cmd_data_check(args: argparse.Namespace) -> int:
    from crystalvlm.data.check import check_data
    from crystalvlm.infer.prompts import checkpoint_encoder

    if not Path(args.file).is_file():
        raise UsageError(f"{args.file}: no such data file")
    if args.image_folder and not Path(args.image_folder).is_dir():
        raise UsageError(f"--image-folder {args.image_folder}: no such folder")
    encoder = checkpoint_encoder(args.model, args.template, max_length=args.max_length, require_template=True)
    prepared, summary = check_data(Path(args.file), Path(args.image_folder) if args.image_folder else None, encoder,
                                   progress=not args.quiet)
    for problem in prepared.problems:
        print(f"BAD {problem}")
    print(json.dumps(summary, indent=2))
    return 1 if prepared.problems else 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from crystalvlm.data.records import read_record
    from crystalvlm.data.show import format_record, show_record
    from crystalvlm.infer.prompts import checkpoint_encoder

    if args.image_folder and not Path(args.image_folder).is_dir():
        raise UsageError(f"--image-folder {args.image_folder}: no such folder")
    record = read_record(args.file, args.index)  # a bad index or malformed record: one-line error
    encoder = checkpoint_encoder(args.model, args.template, require_template=True)
    shown = show_record(record, Path(args.image_folder) if args.image_folder else None, encoder)
    print(format_record(shown, encoder))
    if args.json:
        print(json.dumps(shown.as_json()))
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from crystalvlm.worlds.shapes.writer import write_shapes_world

    manifest = write_shapes_world(Path(args.out), n_train=args.n, n_eval=args.n_eval, seed=args.seed,
                                  image_size=args.image_size, progress=not args.quiet)
    print(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}, indent=2, default=str))
    return 0


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="check and make data").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="report every bad record and token-length statistics",
                            formatter_class=HelpFormatter)
    check.add_argument("file", help="a LLaVA-format JSON or JSON-lines data file")
    check.add_argument("--image-folder", help="the folder the records' image paths are relative to")
    check.add_argument("--model", required=True, help="a checkpoint folder or a cached Hub id (its tokenizer and image-token count)")
    check.add_argument("--template", help="defaults to the checkpoint's template")
    check.add_argument("--max-length", type=int, default=2048, help="records longer than this many tokens are bad")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=_cmd_data_check)
    show = data.add_parser("show", help="print a record's tokens as the model sees them, trained ones marked",
                           formatter_class=HelpFormatter)
    show.add_argument("file", help="a LLaVA-format JSON or JSON-lines data file")
    show.add_argument("--model", required=True, help="a checkpoint folder or a cached Hub id (its tokenizer and image-token count)")
    show.add_argument("--image-folder", help="the folder the records' image paths are relative to (then the image is checked too)")
    show.add_argument("--template", help="defaults to the checkpoint's template")
    show.add_argument("--index", type=int, default=0, help="which record of the file (0-based)")
    show.add_argument("--json", action="store_true", help='end with one line {"input_ids": [...], "labels": [...]}')
    show.set_defaults(func=_cmd_data_show)
    synth = data.add_parser("synth", help="generate a synthetic world").add_subparsers(dest="world", required=True)
    shapes = synth.add_parser("shapes", help="the shapes world: images, training data, benchmarks",
                              formatter_class=HelpFormatter)
    shapes.add_argument("--out", required=True, help="output folder (empty, or holding a shapes world)")
    shapes.add_argument("--n", type=int, default=4000, help="training images")
    shapes.add_argument("--n-eval", type=int, default=300, help="held-out benchmark images")
    shapes.add_argument("--seed", type=int, default=0, help="random seed")
    shapes.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    shapes.add_argument("--quiet", action="store_true", help="no progress bar")
    shapes.set_defaults(func=_cmd_data_synth)
    from crystalvlm.data.curation.commands import add_curation_subcommands
    from crystalvlm.dataengine.commands import add_vigc_subcommand
    from crystalvlm.dataengine.curation_commands import add_data_subcommands
    from crystalvlm.dataengine.pairs_command import add_pairs_subcommand

    add_vigc_subcommand(data)
    add_curation_subcommands(data)  # clean, balance
    add_data_subcommands(data)  # parrot, caption
    add_pairs_subcommand(data, HelpFormatter)  # HA-DPO pairs


# ----------------------------------------------------------------------------- quickstart
def _cmd_quickstart(args: argparse.Namespace) -> int:
    from crystalvlm.worlds.quickstart import run_quickstart

    run_quickstart(Path(args.out), world=args.world, scale=args.scale, seed=args.seed)
    return 0


def _add_quickstart(sub) -> None:
    parser = sub.add_parser("quickstart", help="the whole pipeline on a CPU with nothing to download",
                            formatter_class=HelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="output folder (a rerun continues a killed run)")
    parser.add_argument("--world", choices=["shapes", "web", "hallucination"], default="shapes",
                        help="the synthetic world (hallucination: the study of every hallucination mitigation)")
    parser.add_argument("--scale", choices=["full", "smoke"], default="full",
                        help="smoke: a reduced run for tests (minutes become seconds, scores mean little)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(func=_cmd_quickstart)


# ----------------------------------------------------------------------------- main
class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help shows its default; descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        # None and a store_true's False say nothing; a help that already explains its default keeps its words.
        says_nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if says_nothing or "default" in help_text.lower():
            return help_text
        return super()._get_help_string(action)


def _use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's help shows defaults, whichever module added it."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _use_help_formatter(child)


class UsageError(ValueError):
    """A bad invocation: reported in one line, exit code 2."""


# Errors that mean "the input is wrong", not "crystalvlm is broken": one line, no traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)


def _chat_template_for(name: str) -> str:
    from crystalvlm.data.templates import get_template

    return get_template(name).chat_template_jinja()


def build_parser() -> argparse.ArgumentParser:
    from crystalvlm import __version__

    parser = argparse.ArgumentParser(prog="crystalvlm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"crystalvlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_quickstart(sub)
    _add_train(sub)
    _add_merge(sub)
    _add_data(sub)
    from crystalvlm.eval.commands import add_eval_subcommands
    from crystalvlm.infer.commands import add_infer_subcommands
    from crystalvlm.web2code.commands import add_web2code_subcommands

    from crystalvlm.worlds.engine_command import add_engine_subcommands

    for register in (add_eval_subcommands, add_infer_subcommands, add_web2code_subcommands, add_engine_subcommands):
        register(sub)
    from crystalvlm.models.convert_command import add_convert_subcommand

    add_convert_subcommand(sub, _chat_template_for)
    _use_help_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging
    import os

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        if os.environ.get("CRYSTALVLM_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"crystalvlm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
