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
    from crystalvlm.train.recipe import load_recipe
    from crystalvlm.train.tiny_world import prepare_recipe_inputs
    from crystalvlm.train.trainer import BadDataError, TrainOptions, train_recipe

    run_dir = Path(args.out)
    variables = prepare_recipe_inputs(args.recipe, run_dir, progress=not args.quiet)
    recipe = load_recipe(args.recipe, args.set, variables)
    if (args.data is None) != (args.image_folder is None) and args.data is None:
        print("--image-folder needs --data", file=sys.stderr)
        return 2
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
    parser = sub.add_parser("train", help="train a recipe's stages")
    parser.add_argument("recipe", help="a recipe YAML path or the name of a shipped recipe (tiny, llava-1.5-7b, ...)")
    parser.add_argument("--stage", help="run only this stage (it starts from the previous stage's final checkpoint)")
    parser.add_argument("--data", help="a data file replacing the stage's datasets")
    parser.add_argument("--image-folder", help="the image folder of --data")
    parser.add_argument("--out", default="runs/latest", help="run directory")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--save-every", type=int, help="write a resume checkpoint every N steps")
    parser.add_argument("--resume", action="store_true", help="continue from the latest resume checkpoint")
    parser.add_argument("--strict", action="store_true", help="refuse to train when any record is bad")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    parser.add_argument("--report-to", action="append", choices=["tensorboard", "wandb"])
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=_cmd_train)


# ----------------------------------------------------------------------------- data
def _cmd_data_check(args: argparse.Namespace) -> int:
    from crystalvlm.data.check import check_data
    from crystalvlm.infer.prompts import checkpoint_encoder

    try:
        encoder = checkpoint_encoder(args.model, args.template, max_length=args.max_length, require_template=True)
    except (FileNotFoundError, ValueError, KeyError) as error:  # no such model, no template named, unknown template
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    prepared, summary = check_data(Path(args.file), Path(args.image_folder) if args.image_folder else None, encoder,
                                   progress=not args.quiet)
    for problem in prepared.problems:
        print(f"BAD {problem}")
    print(json.dumps(summary, indent=2))
    return 1 if prepared.problems else 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from crystalvlm.data.synthetic.shapes_world import write_shapes_world

    manifest = write_shapes_world(Path(args.out), n_train=args.n, n_eval=args.n_eval, seed=args.seed,
                                  image_size=args.image_size, progress=not args.quiet)
    print(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}, indent=2, default=str))
    return 0


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="check and make data").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="report every bad record and token-length statistics")
    check.add_argument("file")
    check.add_argument("--image-folder")
    check.add_argument("--model", required=True, help="a checkpoint folder or a cached Hub id (its tokenizer and image-token count)")
    check.add_argument("--template", help="defaults to the checkpoint's template")
    check.add_argument("--max-length", type=int, default=2048)
    check.add_argument("--quiet", action="store_true")
    check.set_defaults(func=_cmd_data_check)
    synth = data.add_parser("synth", help="generate a synthetic world").add_subparsers(dest="world", required=True)
    shapes = synth.add_parser("shapes", help="the shapes world: images, training data, benchmarks")
    shapes.add_argument("--out", required=True)
    shapes.add_argument("--n", type=int, default=4000, help="training images")
    shapes.add_argument("--n-eval", type=int, default=300, help="held-out benchmark images")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=64)
    shapes.add_argument("--quiet", action="store_true")
    shapes.set_defaults(func=_cmd_data_synth)


# ----------------------------------------------------------------------------- quickstart
def _cmd_quickstart(args: argparse.Namespace) -> int:
    from crystalvlm.quickstart import run_quickstart

    run_quickstart(Path(args.out), world=args.world, scale=args.scale, seed=args.seed)
    return 0


def _add_quickstart(sub) -> None:
    parser = sub.add_parser("quickstart", help="the whole pipeline on a CPU with nothing to download")
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--world", choices=["shapes", "web"], default="shapes")
    parser.add_argument("--scale", choices=["full", "smoke"], default="full",
                        help="smoke: a reduced run for tests (minutes become seconds, scores mean little)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_cmd_quickstart)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crystalvlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_quickstart(sub)
    _add_train(sub)
    _add_data(sub)
    for register in _optional_registrations():
        register(sub)
    return parser


def _optional_registrations():
    """Subcommand groups defined beside the code they run."""
    import importlib

    found = []
    for module, name in (("crystalvlm.eval.commands", "add_eval_subcommands"),
                         ("crystalvlm.infer.commands", "add_infer_subcommands"),
                         ("crystalvlm.web2code.commands", "add_web2code_subcommands")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ModuleNotFoundError:  # TEMPORARY during development
            pass
    return found


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
