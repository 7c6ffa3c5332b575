"""`crystalvlm engine run`: the closed eval-to-data loop (dataengine.loop) on the shapes world.

    crystalvlm engine run --rounds 3 --budget 600 --out runs/engine
    crystalvlm engine run --rounds 3 --budget 600 --out runs/engine-uniform --sampling uniform --model CKPT
    crystalvlm engine run --rounds 3 --budget 600 --out runs/engine --resume          # after a kill

The world judges each round's model on its probe (a held-out question set per capability: the
world's question types) and, by default, generates the new records itself (ground truth). With
`--generator vigc` the records are made by a VIGC model from unlabelled world images; with
`--generator endpoint` by an OpenAI-compatible endpoint from the images' scene descriptions. With no
--model the world and the starting model are prepared under OUT (or the world is read from --world).
The library's loop knows none of this: this module wires the world into it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

GENERATORS = ("world", "vigc", "endpoint")


def add_engine_subcommands(subparsers) -> None:
    engine = subparsers.add_parser("engine", help="the closed eval-to-data loop (evaluate, sample, generate, finetune)")
    commands = engine.add_subparsers(dest="engine_command", required=True)
    run = commands.add_parser("run", help="run rounds of evaluate -> weakness profile -> adaptive sampling -> "
                                          "generation -> finetune on the shapes world",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--rounds", type=int, default=3, help="rounds after round 0 (the starting model)")
    run.add_argument("--budget", type=int, required=True, help="new records per round")
    run.add_argument("--out", required=True, help="the run folder (summary.json, round_<i>/ ...)")
    run.add_argument("--model", help="the starting checkpoint; default: prepare the world and an under-trained "
                                     "starting model under OUT")
    run.add_argument("--world", help="a prepared shapes world to train the starting model from (only read); "
                                     "default: prepare one under OUT/world")
    run.add_argument("--resume", action="store_true", help="continue the run in OUT (after a kill, or with more rounds)")
    run.add_argument("--sampling", choices=["adaptive", "uniform"], default="adaptive",
                     help="adaptive: ABS, shares proportional to error rates with a floor; uniform: equal shares")
    run.add_argument("--floor", type=float, default=0.05, help="the smallest share of a round's budget per capability")
    run.add_argument("--seed", type=int, default=0, help="seed of generation and training")
    run.add_argument("--training", choices=["continue", "accumulate"], default="continue",
                     help="continue: each round finetunes the previous round's model on its new records; "
                          "accumulate: each round finetunes the starting model on all records so far")
    run.add_argument("--epochs", type=float, default=None, help="finetune epochs over each round's records "
                                                                 "(default: the world's, 2)")
    run.add_argument("--probe-size", type=int, default=200, help="probe questions per capability")
    run.add_argument("--generator", choices=GENERATORS, default="world",
                     help="who makes the records: the world's generator (ground truth), a VIGC model on "
                          "unlabelled images, or an OpenAI-compatible endpoint")
    run.add_argument("--vigc-model", help="--generator vigc: the checkpoint that generates questions and answers "
                                          "(default: the current round's model)")
    run.add_argument("--endpoint", help="--generator endpoint: the base URL of an OpenAI-compatible API (…/v1)")
    run.add_argument("--endpoint-model", default="gpt-4o-mini", help="--generator endpoint: the model name")
    run.add_argument("--api-key-env", help="--generator endpoint: the environment variable holding the API key "
                                           "(default: send no key)")
    run.add_argument("--retries", type=int, default=4, help="--generator endpoint: attempts per request "
                                                             "(network errors, 429, 5xx)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=run_engine_command)


def run_engine_command(args: argparse.Namespace) -> int:
    from crystalvlm.dataengine.finetune import StageFinetuner
    from crystalvlm.dataengine.loop import DataEngine, EngineSettings
    from crystalvlm.web2code.openai_http import EndpointError
    from crystalvlm.worlds.shapes.engine import (
        CAPABILITIES, ENGINE_EPOCHS, ShapesProbe, engine_stage, prepare_start_model,
    )

    # Everything the user typed is checked before minutes of preparation.
    if args.budget < len(CAPABILITIES):
        raise ValueError(f"--budget {args.budget} is smaller than the number of capabilities ({len(CAPABILITIES)}: "
                         f"{', '.join(CAPABILITIES)}); each needs at least one record per round")
    settings = EngineSettings(rounds=args.rounds, budget=args.budget, sampling=args.sampling, floor=args.floor,
                              seed=args.seed, training=args.training)
    if args.probe_size < 1:
        raise ValueError(f"--probe-size must be at least 1, got {args.probe_size}")
    if args.model and not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {args.model}: no checkpoint there (config.json missing)")
    if args.generator == "endpoint" and not args.endpoint:
        raise ValueError("--generator endpoint needs --endpoint URL")
    out = Path(args.out)
    if (out / "engine.json").is_file() and not args.resume:
        raise FileExistsError(f"{out} holds an engine run already; pass --resume to continue it, or choose another --out")
    progress = not args.quiet
    start = Path(args.model) if args.model else prepare_start_model(out, Path(args.world) if args.world else None,
                                                                    progress=progress)
    probe = ShapesProbe(per_capability=args.probe_size, progress=progress)
    source = _source(args, out, probe)
    finetuner = StageFinetuner(engine_stage(args.epochs if args.epochs is not None else ENGINE_EPOCHS), progress=progress)
    engine = DataEngine(out, settings, start, probe, source, finetuner, progress=progress)
    try:
        summary = engine.run(resume=args.resume)
    except EndpointError as error:
        print(f"crystalvlm engine: error: {error}\nthe round is kept as far as it got: rerun with --resume to "
              "continue it (answered requests are not asked again)", file=sys.stderr)
        return 3
    print(f"\n{'round':>5}  {'overall':>7}  " + "  ".join(f"{name[:9]:>9}" for name in probe.capabilities) + "  records")
    for entry in summary["rounds"]:
        print(f"{entry['round']:>5}  {entry['overall']:>7.3f}  "
              + "  ".join(f"{entry['scores'][name]:>9.3f}" for name in probe.capabilities) + f"  {entry['records']:>7}")
    print(f"\nsummary: {out / 'summary.json'}; report: {out / 'report.html'}")
    return 0


def _source(args: argparse.Namespace, out: Path, probe):
    from crystalvlm.worlds.shapes.engine import ShapesWorldSource

    if args.generator == "world":
        return ShapesWorldSource(excluded=probe.signatures())
    if args.generator == "vigc":
        from crystalvlm.dataengine.vigc import VigcSource
        from crystalvlm.worlds.shapes.engine import write_unlabelled_images
        from crystalvlm.worlds.shapes.vigc import VIGC_QUESTION_SUFFIX, VIGC_QUESTION_TYPES

        images = write_unlabelled_images(out / "unlabelled", 2000, excluded=probe.signatures())
        return VigcSource(images, VIGC_QUESTION_TYPES, Path(args.vigc_model) if args.vigc_model else None,
                          question_suffix=VIGC_QUESTION_SUFFIX)
    from crystalvlm.dataengine.endpoint import EndpointSource
    from crystalvlm.web2code.openai_http import ChatEndpoint
    from crystalvlm.worlds.shapes.engine import described_images
    from crystalvlm.worlds.shapes.questions import SHORT_ANSWER_PROMPT

    if args.retries < 1:
        raise ValueError(f"--retries must be at least 1, got {args.retries}")
    endpoint = ChatEndpoint(args.endpoint, args.endpoint_model, api_key_env=args.api_key_env,
                            retries=args.retries - 1)
    return EndpointSource(endpoint, described_images(out / "unlabelled", 2000, excluded=probe.signatures()),
                          answer_format=SHORT_ANSWER_PROMPT, question_suffix=SHORT_ANSWER_PROMPT)
