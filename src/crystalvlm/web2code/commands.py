"""`crystalvlm web2code ...`: render HTML safely, make Web2Code training data, convert datasets.

    crystalvlm web2code render IN... --out DIR [--full-page] [--width W --height H] [--javascript] [--timeout S]
    crystalvlm web2code synth --out DIR [--n N] [--n-eval M] [--seed S] [--complexity simple|full] ...
    crystalvlm web2code synth --out DIR --llm-endpoint URL --llm-model M [--llm-key-env VAR] ...
    crystalvlm web2code convert {websight,pix2code,websrc} SRC --out DIR [--strict]

Every command writes LLaVA conversation records (JSON lists) and prints a JSON summary; long work
shows a progress bar on stderr (`--quiet` turns it off). Exit status: 0 done, 1 done but some
inputs failed (listed in the summary / report), 2 refused (bad arguments, missing browser, a bad
input under `--strict`). The API key of an LLM endpoint is read from the environment variable
named by `--llm-key-env`, never from the command line, where other users could read it, and never
from $OPENAI_API_KEY unless that is the variable named: a key meant for one service is not sent to
another. A key is refused over plain http except to a loopback address (see `openai_http`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_SOME_FAILED, EXIT_REFUSED = 0, 1, 2


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def _settings(args: argparse.Namespace, **overrides):
    from crystalvlm.web2code.render import RenderSettings

    values = dict(viewport=(args.width, args.height), timeout_s=args.timeout, workers=args.workers,
                  sandbox=args.sandbox)
    values.update(overrides)
    return RenderSettings(**values)


# ----------------------------------------------------------------------------- render
def _cmd_render(args: argparse.Namespace) -> int:
    from crystalvlm.web2code.render import BrowserUnavailable, collect_html_inputs, render_files

    try:
        settings = _settings(args, full_page=args.full_page, java_script=args.javascript,
                             max_page_height=max(args.max_page_height, args.height))
        files = collect_html_inputs([Path(item) for item in args.inputs])
    except (ValueError, FileNotFoundError) as error:
        return _error(str(error))
    if not files:
        return _error(f"no .html or .htm files in {', '.join(args.inputs)}")
    try:
        rendered = render_files(files, Path(args.out), settings, write_layout=args.layout, progress=not args.quiet)
    except BrowserUnavailable as error:
        return _error(str(error))
    failed = [item for item in rendered if not item.result.ok]
    summary = {
        "pages": len(rendered), "ok": len(rendered) - len(failed),
        "timeout": sum(item.result.status == "timeout" for item in rendered),
        "error": sum(item.result.status == "error" for item in rendered),
        "blocked_requests": sum(item.result.blocked_requests for item in rendered),
        "out": str(args.out), "report": str(Path(args.out) / "render_report.jsonl"),
        "failed": [f"{item.source}: {item.result.status}: {item.result.reason}" for item in failed[:20]],
    }
    print(json.dumps(summary, indent=2))
    return EXIT_SOME_FAILED if failed else EXIT_OK


# ----------------------------------------------------------------------------- synth
def _cmd_synth(args: argparse.Namespace) -> int:
    from crystalvlm.web2code.render import BrowserUnavailable

    if args.n < 0 or args.n_eval < 0:
        return _error("--n and --n-eval must be >= 0")
    try:
        if args.llm_endpoint:
            return _synth_llm(args)
        from crystalvlm.web2code.synth import write_web_world

        world = write_web_world(Path(args.out), n_train=args.n, n_eval=args.n_eval, seed=args.seed,
                                viewport=(args.width, args.height), complexity=args.complexity,
                                vary_prompt=args.vary_prompt, questions_per_page=args.questions_per_page,
                                wub_per_page=args.wub_per_page, timeout_s=args.timeout, workers=args.workers,
                                progress=not args.quiet)
    except BrowserUnavailable as error:
        return _error(str(error))
    except (ValueError, RuntimeError) as error:
        return _error(str(error))
    print(json.dumps({"out": str(world.root), "image_folder": str(world.image_folder),
                      "dwcg_train": str(world.dwcg_train), "dwu_train": str(world.dwu_train),
                      "wcgb": str(world.wcgb), "wub": str(world.wub), "counts": world.counts}, indent=2))
    return EXIT_OK


def _synth_llm(args: argparse.Namespace) -> int:
    """Pages written by an LLM (DWCG) with its questions plus DOM-derived ones (DWU)."""
    from crystalvlm.web2code.llm_pages import generate_llm_pages, write_llm_world
    from crystalvlm.web2code.openai_http import ChatEndpoint, EndpointError
    from crystalvlm.web2code.render import RenderPool

    if not args.llm_model:
        return _error("--llm-endpoint needs --llm-model (the model name the endpoint serves)")
    # Only the variable the user named is read (unset: no key); the endpoint refuses to send a key
    # over plain http to a host that is not loopback.
    endpoint = ChatEndpoint(args.llm_endpoint, args.llm_model, api_key_env=args.llm_key_env, timeout_s=args.llm_timeout)
    try:
        pages, problems = generate_llm_pages(endpoint, args.n, seed=args.seed, qa_per_page=args.llm_qa_per_page,
                                             progress=not args.quiet)
    except EndpointError as error:
        return _error(str(error))
    out = Path(args.out)
    with RenderPool(_settings(args)) as pool:
        written = write_llm_world(pages, out, pool, seed=args.seed, dom_questions_per_page=args.questions_per_page)
    problems += written["problems"]
    manifest = {"endpoint": endpoint.base_url, "model": endpoint.model, "seed": args.seed, "asked": args.n,
                "viewport": [args.width, args.height], "code_records": written["code_records"],
                "qa_records": written["qa_records"], "image_folder": "images", "problems": problems[:200]}
    (out / "llm_manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    print(json.dumps({"out": str(out), "image_folder": written["image_folder"],
                      "dwcg": str(out / "dwcg_llm.json"), "dwu": str(out / "dwu_llm.json"),
                      "code_records": written["code_records"], "qa_records": written["qa_records"],
                      "problems": problems[:20]}, indent=2))
    if not written["code_records"]:
        return _error(f"the endpoint produced no usable page; first problems: {problems[:3]}")
    return EXIT_SOME_FAILED if problems else EXIT_OK


# ----------------------------------------------------------------------------- convert
def _cmd_convert(args: argparse.Namespace) -> int:
    from crystalvlm.web2code.converters import ConversionError, convert_pix2code, convert_websight, convert_websrc
    from crystalvlm.web2code.render import BrowserUnavailable, RenderPool

    progress = not args.quiet
    try:
        if args.format == "websight":
            report = convert_websight(args.source, args.out, image_folder=args.image_folder, seed=args.seed,
                                      vary_prompt=not args.fixed_prompt, strict=args.strict, progress=progress)
        elif args.format == "pix2code":
            if args.render:
                with RenderPool(_settings(args)) as pool:
                    report = convert_pix2code(args.source, args.out, pool=pool, seed=args.seed,
                                              vary_prompt=not args.fixed_prompt, strict=args.strict, progress=progress)
            else:
                report = convert_pix2code(args.source, args.out, seed=args.seed, vary_prompt=not args.fixed_prompt,
                                          strict=args.strict, progress=progress)
        else:
            report = convert_websrc(args.source, args.out, turns_per_record=args.turns_per_record,
                                    strict=args.strict, progress=progress)
    except (ConversionError, FileNotFoundError, BrowserUnavailable) as error:
        return _error(str(error))
    print(json.dumps(report.as_dict(), indent=2))
    return EXIT_SOME_FAILED if report.skipped else EXIT_OK


# ----------------------------------------------------------------------------- parser
def _add_render_options(parser: argparse.ArgumentParser, width: int = 1920, height: int = 1080) -> None:
    parser.add_argument("--width", type=int, default=width, help="viewport width in CSS pixels")
    parser.add_argument("--height", type=int, default=height, help="viewport height in CSS pixels")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per page (load, layout, screenshot)")
    parser.add_argument("--workers", type=int, default=2, help="pages rendered at once (browser contexts)")
    parser.add_argument("--sandbox", choices=["auto", "on", "off"], default="auto",
                        help="Chromium's sandbox: auto (on where the OS allows it, else off with a warning saying "
                             "why, e.g. as root), on (refuse to render without it), off")


def add_web2code_subcommands(subparsers) -> None:
    web = subparsers.add_parser("web2code", help="render HTML, make Web2Code data, convert web datasets")
    sub = web.add_subparsers(dest="web2code_command", required=True)

    render = sub.add_parser("render", help="screenshot HTML files in Chromium, with no network access")
    render.add_argument("inputs", nargs="+", metavar="IN", help="HTML files or folders of them")
    render.add_argument("--out", required=True, help="folder for <name>.png and render_report.jsonl")
    render.add_argument("--full-page", action="store_true", help="the whole page (Design2Code), not just the viewport")
    render.add_argument("--max-page-height", type=int, default=16384, help="full-page screenshots stop here")
    render.add_argument("--javascript", action="store_true", help="run the pages' scripts (off by default)")
    render.add_argument("--layout", action="store_true", help="also write <name>.layout.json (text blocks, elements, DOM)")
    _add_render_options(render)
    render.add_argument("--quiet", action="store_true", help="no progress bar")
    render.set_defaults(func=_cmd_render)

    synth = sub.add_parser("synth", help="generated pages -> DWCG code records, DWU questions, WCGB/WUB files")
    synth.add_argument("--out", required=True, help="output folder for pages, screenshots and records")
    synth.add_argument("--n", type=int, default=200, help="training pages (with --llm-endpoint: pages to ask for)")
    synth.add_argument("--n-eval", type=int, default=20, help="held-out pages for the WCGB and WUB files")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument("--complexity", choices=["simple", "full"], default="full",
                       help="full: DWCG-like landing pages; simple: tiny pages a tiny model can learn")
    synth.add_argument("--vary-prompt", action="store_true", help="vary the code-generation instruction wording")
    synth.add_argument("--questions-per-page", type=int, default=6, help="DWU questions per page")
    synth.add_argument("--wub-per-page", type=int, default=4, help="Yes/No questions per held-out page")
    _add_render_options(synth)
    llm = synth.add_argument_group("LLM-written pages (Web2Code's DWCG recipe through an OpenAI-compatible endpoint)")
    llm.add_argument("--llm-endpoint", metavar="URL", help="base URL, e.g. http://127.0.0.1:8000/v1")
    llm.add_argument("--llm-model", metavar="M", help="model name to ask")
    llm.add_argument("--llm-key-env", metavar="VAR", default=None,
                     help="environment variable holding this endpoint's API key, e.g. OPENAI_API_KEY for "
                          "https://api.openai.com/v1 (default: send no key)")
    llm.add_argument("--llm-qa-per-page", type=int, default=4, help="questions the LLM writes per page")
    llm.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per request")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_synth)

    convert = sub.add_parser("convert", help="WebSight / pix2code / WebSRC -> LLaVA records (DWCGR, DWUR)")
    convert.add_argument("format", choices=["websight", "pix2code", "websrc"], help="the source data set")
    convert.add_argument("source", help="websight: parquet shard(s) or JSON(L) file; pix2code: folder of .gui "
                                        "files; websrc: the folder holding {domain}/{website}/dataset.csv")
    convert.add_argument("--out", required=True, help="output folder for the records and images")
    convert.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    convert.add_argument("--seed", type=int, default=0, help="random seed (prompt wording, record order)")
    convert.add_argument("--fixed-prompt", action="store_true", help="always Web2Code's evaluation prompt")
    convert.add_argument("--image-folder", help="websight JSON(L): folder the image paths are relative to "
                                                "(default: the file's folder)")
    convert.add_argument("--render", action="store_true",
                         help="pix2code: render the compiled HTML instead of using the .png beside each .gui")
    convert.add_argument("--turns-per-record", type=int, default=4, help="websrc: questions per record")
    _add_render_options(convert, 1280, 800)
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.set_defaults(func=_cmd_convert)
