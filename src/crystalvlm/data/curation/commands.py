"""`crystalvlm data clean` and `crystalvlm data balance`: the argument parsers and their wiring.

    crystalvlm data clean corpus.jsonl --out clean.jsonl [--text-key text] [--workers 4]
    crystalvlm data balance captions.jsonl --out balanced.jsonl --text-key caption --cap 100

Each writes the kept records (unchanged, in input order) to --out, every removed line with its
`reason` to OUT.removed.jsonl, an HTML report to OUT.report.html, and prints a JSON summary as the
last thing on stdout (progress bars go to stderr). A killed run continues when rerun with the same
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    source, out = Path(args.input), Path(args.out)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such input file")
    if source.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the input file")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a .jsonl file name")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    return source, out


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _report(summary: dict, out: Path, title: str, extra=None) -> Path:
    from crystalvlm.reporting import HtmlReport

    page = HtmlReport(title)
    page.paragraph(f"{summary['input']} -> {summary['output']}: {summary['kept']} kept, {summary['removed']} removed "
                   f"of {summary['lines']} lines.")
    page.heading("Removed, by reason")
    page.table(["reason", "lines"], [[reason, count] for reason, count in summary["removed_by_reason"].items()])
    if extra is not None:
        extra(page)
    for note in summary.get("notes", []):
        page.paragraph(note, muted=True)
    return page.write(out.with_name(out.name + ".report.html"))


# ----------------------------------------------------------------------------- clean
def _cmd_clean(args: argparse.Namespace) -> int:
    from crystalvlm.data.curation.clean import CleanSettings, CleanStep
    from crystalvlm.data.curation.stream import run_stream

    source, out = _check_paths(args)
    settings = CleanSettings(
        text_key=args.text_key, filters=_comma_list(args.filters), min_words=args.min_words,
        min_stop_words=args.min_stop_words, min_mean_word_length=args.min_mean_word_length, languages=_comma_list(args.languages), pii=args.pii,
        exact=not args.no_exact, near=not args.no_near, near_threshold=args.near_threshold, shingle=args.shingle,
        num_perm=args.num_perm)
    if args.engine == "datatrove":
        from crystalvlm.data.curation.datatrove_engine import run_with_datatrove

        if args.quiet:  # datatrove logs each task's progress through loguru on stderr
            from loguru import logger

            logger.remove()
            logger.add(sys.stderr, level="WARNING")

        summary = run_with_datatrove(source, out, CleanStep(settings), tasks=args.workers, text_key=args.text_key,
                                     batch_size=args.batch_size, progress=not args.quiet)
    else:
        summary = run_stream(source, out, CleanStep(settings), text_key=args.text_key, workers=args.workers,
                             batch_size=args.batch_size, progress=not args.quiet)
    summary["report"] = str(_report(summary, out, f"data clean: {source.name}"))
    print(json.dumps(summary, indent=2))
    return 0


def _add_clean(data_sub) -> None:
    from crystalvlm.data.curation.clean import FILTERS, PII_MODES

    parser = data_sub.add_parser(
        "clean", help="remove duplicates, near duplicates, low-quality and off-language text from JSON lines",
        description="Kept records go to --out unchanged and in input order; every removed line goes to "
                    "OUT.removed.jsonl with a `reason`; a JSON summary is printed last.\n"
                    "Normalisation (NFKC, case, whitespace) is used for matching only. PII is reported by "
                    "default; --pii scrub rewrites the text field of kept records, the only rewrite.")
    parser.add_argument("input", help="a JSON-lines file, one record (object) per line")
    parser.add_argument("--out", required=True, help="the kept records (JSON lines); also writes OUT.removed.jsonl")
    parser.add_argument("--text-key", default="text", help="the record field holding the text")
    parser.add_argument("--filters", default="gopher-quality",
                        help=f"comma-separated quality filters from datatrove, any of: {', '.join(FILTERS)} "
                             "('' for none)")
    parser.add_argument("--min-words", type=int, default=3, help="gopher-quality: fewer words is too short")
    parser.add_argument("--min-stop-words", type=int, default=0,
                        help="gopher-quality: at least this many English stop words (Gopher used 2 for web pages)")
    parser.add_argument("--min-mean-word-length", type=float, default=3.0,
                        help="gopher-quality: a lower mean word length is junk (0: no limit; captions of short "
                             "words like 'a red cat' fall below 3)")
    parser.add_argument("--languages", default="",
                        help="comma-separated ISO 639-1 codes to keep, e.g. en (py3langid; skipped with a note "
                             "when it is not installed); empty: no language filter")
    parser.add_argument("--pii", choices=PII_MODES, default="report",
                        help="e-mail addresses, public IPs, phone numbers: count them, remove their records, "
                             "or scrub them (rewrites kept records)")
    parser.add_argument("--near-threshold", type=float, default=0.8,
                        help="MinHash-LSH Jaccard threshold for near duplicates")
    parser.add_argument("--shingle", type=int, default=3, help="words per n-gram in the MinHash sets")
    parser.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--no-exact", action="store_true", help="keep exact duplicates")
    parser.add_argument("--no-near", action="store_true", help="keep near duplicates")
    parser.add_argument("--workers", type=int, default=1, help="processes (or datatrove tasks) for the per-record work")
    parser.add_argument("--engine", choices=["stream", "datatrove"], default="stream",
                        help="stream: a multiprocessing pool inside the streaming runner; datatrove: the per-record "
                             "work as datatrove tasks (LocalPipelineExecutor), then the ordered pass; same output")
    parser.add_argument("--batch-size", type=int, default=256, help="records per task sent to a worker")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_clean)


# ----------------------------------------------------------------------------- balance
def _cmd_balance(args: argparse.Namespace) -> int:
    from crystalvlm.data.curation.balance import BalanceSettings, balance_file

    source, out = _check_paths(args)
    settings = BalanceSettings(text_key=args.text_key, cap=args.cap, min_count=args.min_count, seed=args.seed,
                               heads=args.heads)
    summary = balance_file(source, out, settings, workers=args.workers, batch_size=args.batch_size,
                           progress=not args.quiet)

    def coverage_table(page) -> None:
        page.heading("Concept coverage")
        before, after = summary["coverage"]["before"], summary["coverage"]["after"]
        page.table(["measure", "before", "after"], [[key, before[key], after[key]] for key in before])

    summary["report"] = str(_report(summary, out, f"data balance: {source.name}", coverage_table))
    print(json.dumps(summary, indent=2))
    return 0


def _add_balance(data_sub) -> None:
    parser = data_sub.add_parser(
        "balance", help="a concept-balanced subset (LCS-558K's recipe): cap frequent noun phrases, keep rare ones",
        description="Pass 1 counts the noun-phrase concepts of every record (saved to OUT.concepts.json); pass 2 "
                    "keeps a record when one of its concepts selects it: all records of a concept seen at most "
                    "--cap times, a random ~--cap of a more frequent one. Kept records go to --out unchanged and "
                    "in input order, the others to OUT.removed.jsonl with a `reason`; the JSON summary (printed "
                    "last) gives concept coverage before and after.")
    parser.add_argument("input", help="a JSON-lines file, one record (object) per line")
    parser.add_argument("--out", required=True, help="the kept records (JSON lines); also writes OUT.removed.jsonl")
    parser.add_argument("--text-key", default="text", help="the record field holding the caption")
    parser.add_argument("--cap", type=int, default=100, help="about this many records kept per frequent concept")
    parser.add_argument("--min-count", type=int, default=1,
                        help="ignore concepts seen fewer times (LLaVA used 3); a record with none left is removed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subset of a frequent concept")
    parser.add_argument("--heads", action="store_true",
                        help="count head nouns ('circle') instead of whole noun phrases ('red circle')")
    parser.add_argument("--workers", type=int, default=1, help="processes for the per-record work")
    parser.add_argument("--batch-size", type=int, default=256, help="records per task sent to a worker")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_balance)


def add_curation_subcommands(data_sub) -> None:
    """Register `clean` and `balance` under `crystalvlm data`."""
    _add_clean(data_sub)
    _add_balance(data_sub)
