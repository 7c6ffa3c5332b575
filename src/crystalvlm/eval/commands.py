"""`crystalvlm eval`: evaluate a checkpoint on benchmarks, or re-score an answers file.

    crystalvlm eval runs/quickstart/run/finetune --tasks pope,mme --benchmarks runs/quickstart/world
    crystalvlm eval CKPT --tasks pope_random,textvqa --benchmarks data/benchmarks --image-folder data/coco/val2014
    crystalvlm eval score --task pope --answers answers.jsonl --annotations data/benchmarks/pope/coco_pope_random.json

Both forms live under the one name `eval`: argv whose first word after `eval` is `score` goes to
the re-scoring parser, anything else is a checkpoint folder (write `./score` for a checkpoint
folder that is really called `score`). Bad input — an unknown task, a missing folder, an
unreadable or malformed file — prints `error: ...` naming it and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

EXIT_BAD_INPUT = 2
# What `eval score --annotations` names, per task.
ANNOTATION_FILE_TASKS = {"pope": "one coco_pope_<split>.json file", "textvqa": "the TextVQA_0.5.1_val.json file"}
ANNOTATION_FOLDER_TASKS = {"mme": "the MME release folder", "scienceqa": "the ScienceQA folder (problems.json, pid_splits.json)"}

RUN_USAGE = "%(prog)s MODEL --tasks TASK[,TASK...] --benchmarks DIR [options]"
SCORE_USAGE = "%(prog)s score --task {mme,pope,scienceqa,textvqa} --answers FILE --annotations PATH [--scoring ...]"

EVAL_DESCRIPTION = """\
Two forms:

  crystalvlm eval MODEL --tasks ... --benchmarks DIR
      generate answers with the checkpoint MODEL (batched, cached: an interrupted run restarted
      with the same settings reuses every finished sample), score them, print a score table and
      write OUT/results.json, OUT/samples_<task>.jsonl, OUT/answers_<task>.jsonl (LLaVA format),
      OUT/report.html, and the same results and samples in lmms-eval's layout under OUT/lmms-eval/.

  crystalvlm eval score --task TASK --answers FILE --annotations PATH
      score an existing answers file (crystalvlm's answers_<task>.jsonl or LLaVA-1.5's
      model_vqa_loader / model_vqa_science output) and print the metrics as one JSON object.
      See `crystalvlm eval score --help`.
"""

EVAL_EPILOG = """\
{tasks}
--benchmarks is a folder holding one sub-folder per benchmark in the official layouts (pope/, mme/,
scienceqa/, textvqa/, chair/), a single benchmark's folder, or a shapes world (crystalvlm data
synth shapes). --image-folder is the folder of COCO val2014 images that POPE and CHAIR ask about (a
shapes world names its own). Scoring conventions (--scoring): docs/eval-conventions.md.
"""

SCORE_DESCRIPTION = """\
Score an answers file and print one JSON object of metrics (fractions; MME in points).

--annotations is, per task: pope: one coco_pope_<split>.json; mme: the MME release folder;
scienceqa: the ScienceQA folder (problems.json, pid_splits.json; test split); textvqa:
TextVQA_0.5.1_val.json. Every question must be answered (ScienceQA: an unanswered problem is
wrong); answers are matched by question_id (and prompt, for MME and TextVQA), never by line order.
"""


class EvalArgumentParser(argparse.ArgumentParser):
    """The `eval` parser: arguments starting with `score` are parsed by `score_parser` instead.

    argparse cannot put a free positional (MODEL) beside a sub-command name, so the choice is made
    on the first word; each form keeps its own required options, errors and --help.
    """

    score_parser: argparse.ArgumentParser

    def parse_known_args(self, args=None, namespace=None):
        if args and args[0] == "score":
            return self.score_parser.parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)


def add_eval_subcommands(subparsers) -> None:
    # Light imports only: the runner (torch, transformers) loads when the command runs.
    from crystalvlm.eval.task_selection import TEXTVQA_PROMPTS
    from crystalvlm.eval.tasks.base import SCORING_CONVENTIONS
    from crystalvlm.eval.tasks.registry import task_names
    from crystalvlm.infer.launch import add_device_arguments

    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on benchmarks (or: eval score, re-score an answers file)",
        usage=RUN_USAGE + "\n       " + SCORE_USAGE, description=EVAL_DESCRIPTION,
        epilog=EVAL_EPILOG.format(tasks=textwrap.fill(
            f"tasks: {', '.join(task_names())}; pope (= the three POPE splits, scored one by one).", 100)),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # add_parser builds the parent parser's class; the `score` dispatch needs this subclass.
    parser.__class__ = EvalArgumentParser
    parser.score_parser = _score_parser(parser.prog, SCORING_CONVENTIONS)

    parser.add_argument("model", metavar="MODEL", help="a checkpoint folder or a cached Hub id (any HF Llava checkpoint)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names, e.g. pope,mme")
    parser.add_argument("--benchmarks", required=True, metavar="DIR", help="the benchmarks folder (see below)")
    parser.add_argument("--image-folder", metavar="DIR", help="COCO val2014 images of POPE and CHAIR")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="only the first N samples of each task (MME keeps an image's two questions together)")
    parser.add_argument("--batch-size", type=int, default=16, help="requests generated together")
    parser.add_argument("--decoding", default="greedy",
                        help="greedy | beam:num_beams=3 | opera | vcd:alpha=1 | sample:temperature=0.7,seed=1 ...")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="generation budget of every task (default: each task's official budget)")
    parser.add_argument("--scoring", choices=SCORING_CONVENTIONS, default="llava",
                        help="scoring convention where LLaVA's and lmms-eval's scripts differ")
    parser.add_argument("--textvqa-prompt", choices=list(TEXTVQA_PROMPTS), default="llava",
                        help="llava: question + OCR tokens (LLaVA-1.5's numbers); lmms-eval: capitalised "
                             "question, no OCR tokens")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: runs/eval/<run>-<stage> for a checkpoint that crystalvlm train "
                             "wrote, runs/eval/<checkpoint folder name> for others)")
    parser.add_argument("--save-every", type=int, metavar="N",
                        help="samples generated between cache writes (default: the runner's CHUNK, 64); "
                             "an interruption loses at most N")
    add_device_arguments(parser)
    parser.add_argument("--analyse", action="store_true",
                        help="also write the bad-case analysis: error rates per capability (subtask, split) with "
                             "Wilson intervals, the worst examples, OUT/weakness_profile.json and OUT/analysis.html")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_eval)


def _score_parser(eval_prog: str, conventions: tuple[str, ...]) -> argparse.ArgumentParser:
    from crystalvlm.eval.rescore import RESCORABLE_TASKS

    score = argparse.ArgumentParser(prog=f"{eval_prog} score", description=SCORE_DESCRIPTION,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    score.add_argument("--task", required=True, choices=RESCORABLE_TASKS, help="the benchmark the answers are for")
    score.add_argument("--answers", required=True, metavar="FILE", help="JSON lines: question_id, prompt, text")
    score.add_argument("--annotations", required=True, metavar="PATH", help="the benchmark's ground truth (see above)")
    score.add_argument("--scoring", choices=conventions, default="llava",
                       help="scoring convention where LLaVA's and lmms-eval's scripts differ (default: llava)")
    score.set_defaults(func=run_score)
    return score


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _message(error: BaseException) -> str:
    # KeyError's str() adds quotes around the message; the others print as written.
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


# ----------------------------------------------------------------------------- eval score
def run_score(args: argparse.Namespace) -> int:
    from crystalvlm.eval.rescore import score_answers_file

    answers, annotations = Path(args.answers), Path(args.annotations)
    if not answers.is_file():
        return _fail(f"answers file {answers} not found")
    if not annotations.exists():
        return _fail(f"annotations {annotations} not found")
    wants_folder = args.task in ANNOTATION_FOLDER_TASKS
    if annotations.is_dir() != wants_folder:
        expected = ANNOTATION_FOLDER_TASKS.get(args.task) or ANNOTATION_FILE_TASKS[args.task]
        return _fail(f"--annotations for {args.task} is {expected}; {annotations} is a {'file' if wants_folder else 'folder'}")
    try:
        _check_utf8(answers)
        metrics = score_answers_file(args.task, answers, annotations, args.scoring)
    except UnicodeDecodeError as error:  # the answers file passed _check_utf8, so a benchmark file failed
        return _fail(f"a file of {annotations} is not UTF-8 text ({error.reason} at byte {error.start})")
    except (ValueError, KeyError, OSError) as error:  # BenchmarkFormatError is a ValueError
        return _fail(_message(error))
    print(json.dumps({"task": args.task, "scoring": args.scoring, "answers": str(answers),
                      "metrics": metrics}))
    return 0


def _check_utf8(path: Path) -> None:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


# ----------------------------------------------------------------------------- eval MODEL
def _decoding(args: argparse.Namespace):
    """The decoding config and the generation budget override (None: each task's own budget).

    A budget may come from --max-new-tokens or from the decoding string (`greedy:max_new_tokens=16`);
    the runner applies it per task, so both name the same setting.
    """
    from crystalvlm.infer.decoding.config import DecodingConfig

    decoding = DecodingConfig.parse(args.decoding)
    # Parsing again with another default shows whether the string itself set max_new_tokens.
    in_string = DecodingConfig.parse(args.decoding, max_new_tokens=decoding.max_new_tokens + 1) == decoding
    budget = decoding.max_new_tokens if in_string else None
    if args.max_new_tokens is not None:
        if budget is not None and budget != args.max_new_tokens:
            raise ValueError(f"--max-new-tokens {args.max_new_tokens} and max_new_tokens={budget} in --decoding disagree")
        budget = args.max_new_tokens
    if budget is not None and budget < 1:
        raise ValueError(f"the generation budget must be at least 1 token, got {budget}")
    return decoding, budget


def _start_renderers(tasks) -> list:
    """A browser for each task that scores by rendering (WCGB), at its screenshots' size; the
    caller closes them. Tasks get their renderer passed in rather than starting one themselves."""
    started = []
    for task in tasks:
        if getattr(task, "requires_renderer", False):
            from crystalvlm.web2code.render import RenderPool, RenderSettings

            pool = RenderPool(RenderSettings(viewport=task.viewport()))
            task.use_renderer(pool)
            started.append(pool)
    return started


def run_eval(args: argparse.Namespace) -> int:
    from crystalvlm.data.images import ImageError
    from crystalvlm.eval.outputs import lmms_eval_folder
    from crystalvlm.eval.report import format_score_table, write_eval_report
    from crystalvlm.eval.runner import CHUNK, Shard, evaluate
    from crystalvlm.eval.task_selection import build_tasks, expand_task_names, locate_benchmarks
    from crystalvlm.infer.engine import GenerationEngine, RequestError
    from crystalvlm.models.checkpoint import checkpoint_revision, resolve_model
    from crystalvlm.infer.launch import checkpoint_name, resolve_device_and_dtype

    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    chunk_size = CHUNK if args.save_every is None else args.save_every
    if chunk_size < 1:
        return _fail(f"--save-every must be at least 1, got {chunk_size}")
    try:
        model = resolve_model(args.model)  # a checkpoint folder, or a Hub id found in the Hugging Face cache
    except FileNotFoundError as error:
        return _fail(str(error))
    try:
        decoding, budget = _decoding(args)
        names = expand_task_names(args.tasks)
        location = locate_benchmarks(Path(args.benchmarks), Path(args.image_folder) if args.image_folder else None)
        tasks = build_tasks(names, location, limit=args.limit, max_new_tokens=budget,
                            textvqa_prompt=args.textvqa_prompt)
    except ValueError as error:  # TaskSelectionError, DecodingConfigError
        return _fail(str(error))

    # Named after the run and stage: every stage's checkpoint sits in a folder called `final`, and
    # evaluations of two of them must not share (and overwrite) one output folder.
    name = checkpoint_name(model)
    out = Path(args.out) if args.out else Path("runs") / "eval" / name
    try:
        device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    except ValueError as error:
        return _fail(str(error))
    if args.quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        engine = GenerationEngine.from_checkpoint(model, device=device, dtype=dtype, batch_size=args.batch_size)
    except (OSError, ValueError) as error:
        return _fail(f"cannot load the checkpoint {model}: {error}")
    shard = Shard.from_env()
    renderers = _start_renderers(tasks)
    try:
        # The dtype joins the weights' stamp in the cache key: bfloat16 answers are not float32 answers,
        # and `--dtype auto` picks a different one on a GPU than on the CPU.
        results = evaluate(engine, tasks, out, decoding, model_id=str(model.resolve()), scoring=args.scoring,
                           progress=not args.quiet, shard=shard, chunk_size=chunk_size,
                           model_revision=f"{checkpoint_revision(model)}-{dtype}", model_name=name,
                           settings={"device": device, "dtype": dtype, "batch_size": args.batch_size,
                                     "limit": args.limit})
    except RequestError as error:
        return _fail(f"{error} (a task's generation budget can be lowered with --max-new-tokens)")
    except ImageError as error:
        return _fail(str(error))
    finally:
        for renderer in renderers:
            renderer.close()
    if shard.rank != 0:  # rank 0 merges the shards, scores and reports
        return 0
    report = write_eval_report(out)
    print(format_score_table(results))
    print(f"\nscoring: {args.scoring}; decoding: {decoding.strategy}; samples: "
          + ", ".join(f"{task.name} {len(task.samples())}" for task in tasks))
    print(f"results: {out / 'results.json'}")
    print(f"samples: {out / 'samples_<task>.jsonl'} (LLaVA-format answers: {out / 'answers_<task>.jsonl'})")
    print(f"lmms-eval layout: {lmms_eval_folder(out, name)}")
    print(f"report:  {report}")
    if args.analyse:
        from crystalvlm.eval.analysis import analyse_evaluation, write_analysis

        profile, skipped = analyse_evaluation(out, tasks, scoring=args.scoring)
        profile_path, analysis_page = write_analysis(out, profile)
        print("\nerror rate per capability (95% Wilson interval), worst first:")
        for capability in profile["ranking"]:
            entry = profile["capabilities"][capability]
            print(f"  {capability:<32} {entry['error_rate']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
                  f"  n={entry['samples']}")
        if skipped:
            print(f"not analysed (no per-sample score): {', '.join(skipped)}")
        print(f"weakness profile: {profile_path}; analysis: {analysis_page}")
    return 0
