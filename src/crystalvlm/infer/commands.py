"""`crystalvlm generate | chat | serve`: answering questions about images from the command line.

    crystalvlm generate runs/tiny/finetune --image cat.png --prompt "What is in the image?"
    crystalvlm generate runs/tiny/finetune --image a.png --image b.png --prompt "Which image has more stars?"
    crystalvlm chat runs/tiny/finetune            # then: /image cat.png [dog.png ...], questions, /reset, /quit
    crystalvlm serve runs/tiny/finetune --port 8000 --api-key secret
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crystalvlm.infer.launch import add_device_arguments, checkpoint_name, resolve_device_and_dtype

CHAT_HELP = ("commands: /image PATH [PATH ...] (start a new chat about that image, or those images in that order), "
             "/reset, /quit; anything else is a question")


def add_infer_subcommands(subparsers) -> None:
    from crystalvlm.infer.limits import ServerLimits

    defaults = ServerLimits()
    generate = subparsers.add_parser("generate", help="answer one question about an image")
    _add_model_arguments(generate)
    generate.add_argument("--image", action="append", metavar="PATH",
                          help="an image file; repeat for several images, placed by the prompt's <image> tags in order "
                               "or, without tags, each as '<image>\\n' before the prompt (optional: text-only questions "
                               "work too)")
    generate.add_argument("--prompt", required=True, help="the question")
    generate.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate")
    generate.add_argument("--decoding", default="greedy", help="greedy | sample:... | beam:num_beams=3 | opera | vcd:alpha=1 ...")
    generate.set_defaults(func=run_generate)

    chat = subparsers.add_parser("chat", help="a terminal chat (reads questions from stdin)")
    _add_model_arguments(chat)
    chat.add_argument("--image", action="append", metavar="PATH",
                      help="the first image to talk about; repeat for several (they go with the first question, in order)")
    chat.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate per answer")
    chat.add_argument("--decoding", default="greedy", help="greedy | sample:... | beam:num_beams=3 | opera | vcd:alpha=1 ...")
    chat.set_defaults(func=run_chat)

    serve = subparsers.add_parser("serve", help="an OpenAI-compatible HTTP server with a web chat page",
                                  description="An OpenAI-compatible HTTP server with a web chat page. Every limit "
                                              "below is the server's: no request can raise it.")
    _add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on (default: %(default)s)")
    serve.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' on /v1 (default: $CRYSTALVLM_API_KEY if set, else no key)")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a name the Host header may carry, besides localhost, 127.0.0.1, ::1, the --host name and "
                            "any IP address; repeat for more, '*' for any (default: none)")
    serve.add_argument("--model-name", help="the model id clients send (default: <run>-<stage> for a checkpoint "
                                            "that crystalvlm train wrote, else the checkpoint folder's name)")
    serve.add_argument("--batch-size", type=int, default=8, help="requests generated together (default: %(default)s)")
    serve.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for (default: %(default)s)")
    serve.add_argument("--max-prompt-tokens", type=int, default=defaults.max_prompt_tokens,
                       help="prompt tokens at most, images included (default: %(default)s)")
    serve.add_argument("--max-request-mib", type=float, default=defaults.max_request_bytes / 2**20,
                       help="largest request body in MiB, images included (default: %(default)s)")
    serve.add_argument("--body-timeout", type=float, default=defaults.body_timeout_s,
                       help="seconds for a request body to arrive in full (default: %(default)s)")
    serve.add_argument("--max-image-mib", type=float, default=defaults.max_image_bytes / 2**20,
                       help="largest image in MiB, as sent (default: %(default)s)")
    serve.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels,
                       help="largest image in pixels, width x height, read before decoding (default: %(default)s)")
    serve.add_argument("--max-images", type=int, default=defaults.max_images, help="images per request (default: %(default)s)")
    serve.add_argument("--max-concurrent-requests", type=int, default=defaults.max_concurrent_requests,
                       help="requests being answered at once; more get 503 (default: %(default)s)")
    serve.add_argument("--max-pending-pixels", type=int, default=defaults.max_pending_pixels,
                       help="decoded image pixels all requests being answered may hold together; more get 503 "
                            "(default: %(default)s)")
    serve.add_argument("--allow-remote-images", action="store_true",
                       help="fetch http(s) image URLs, from public addresses only (default: off, data URLs only)")
    serve.add_argument("--remote-image-network", action="append", default=[], metavar="CIDR",
                       help="a non-public network remote images may come from too, e.g. 10.1.0.0/16; repeat for more "
                            "(default: none)")
    serve.add_argument("--remote-image-timeout", type=float, default=defaults.remote_image_timeout_s,
                       help="seconds for fetching all the remote images of a request (default: %(default)s)")
    serve.set_defaults(func=run_serve)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a checkpoint folder or a cached Hub id (owner/name)")
    add_device_arguments(parser)


def _load_engine(args: argparse.Namespace, batch_size: int = 1, device_and_dtype: tuple[str, str] | None = None):
    from crystalvlm.infer.engine import GenerationEngine

    device, dtype = device_and_dtype or resolve_device_and_dtype(args.device, args.dtype)
    return GenerationEngine.from_checkpoint(Path(args.model), device=device, dtype=dtype, batch_size=batch_size)


def _read_image(path: str):
    from crystalvlm.data.images import decode_image_bytes

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"image {path} not found")
    return decode_image_bytes(file.read_bytes(), label=str(path))


def _image_paths(argument: str) -> list[str]:
    """`/image`'s paths: the whole argument when it names a file (a path with spaces), else shell-style words."""
    import shlex

    if not argument or Path(argument).is_file():
        return [argument]
    try:
        return shlex.split(argument)
    except ValueError:  # an unbalanced quote: let the file check name the path
        return [argument]


def _config(args: argparse.Namespace):
    from crystalvlm.infer.decoding.config import DecodingConfig

    return DecodingConfig.parse(args.decoding, max_new_tokens=args.max_new_tokens)


def run_generate(args: argparse.Namespace) -> int:
    from crystalvlm.data.images import ImageError
    from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
    from crystalvlm.infer.engine import GenerationRequest, RequestError

    try:
        config = _config(args)
        images = [_read_image(path) for path in args.image or []]
        device_and_dtype = resolve_device_and_dtype(args.device, args.dtype)  # e.g. --device cuda without a GPU
    except (ValueError, FileNotFoundError, ImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    engine = _load_engine(args, device_and_dtype=device_and_dtype)
    # A prompt that places its images itself keeps them there (interleaved); else LLaVA's "<image>\n" in front.
    placed = IMAGE_PLACEHOLDER in args.prompt
    text = args.prompt if placed else (IMAGE_PLACEHOLDER + "\n") * len(images) + args.prompt
    try:
        result = engine.generate([GenerationRequest([Turn("user", text)], images)], config)[0]
    except RequestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.text)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from crystalvlm.data.images import ImageError
    from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
    from crystalvlm.infer.engine import GenerationRequest, RequestError

    try:
        config = _config(args)
        images = [_read_image(path) for path in args.image or []]
        device_and_dtype = resolve_device_and_dtype(args.device, args.dtype)
    except (ValueError, FileNotFoundError, ImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    engine = _load_engine(args, device_and_dtype=device_and_dtype)
    interactive = sys.stdin.isatty()
    turns: list[Turn] = []
    if interactive:
        print(CHAT_HELP)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            turns, images = [], []
            print("(new chat)")
            continue
        if line.startswith("/image"):
            paths = _image_paths(line[len("/image"):].strip())
            try:
                images = [_read_image(path) for path in paths]
            except (FileNotFoundError, ImageError) as error:
                print(f"error: {error}")
                continue
            turns = []
            print(f"(new chat about {', '.join(paths)})")
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {CHAT_HELP}")
            continue
        # LLaVA's convention: the images go with the first question of a chat, one "<image>\n" each.
        placeholders = len(images) if not turns else 0
        question = Turn("user", (IMAGE_PLACEHOLDER + "\n") * placeholders + line)
        request = GenerationRequest(turns + [question], images)
        print("assistant> ", end="", flush=True)
        pieces = []
        try:
            for piece in engine.stream(request, config):
                pieces.append(piece)
                print(piece, end="", flush=True)
        except RequestError as error:
            print(f"\nerror: {error}")
            continue
        print(flush=True)
        turns = turns + [question, Turn("assistant", "".join(pieces).strip() or "...")]


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from crystalvlm.infer.server import LOCAL_HOSTS, build_app

    limits = server_limits(args)  # checked before the model loads
    api_key = args.api_key or os.environ.get("CRYSTALVLM_API_KEY") or None
    engine = _load_engine(args, batch_size=args.batch_size)
    model_name = args.model_name or checkpoint_name(args.model)
    allowed_hosts = [*LOCAL_HOSTS, *args.allowed_host]
    if args.host not in ("0.0.0.0", "::", ""):
        allowed_hosts.append(args.host)
    app = build_app(engine, model_name, api_key=api_key, limits=limits, allowed_hosts=allowed_hosts)
    if args.host not in LOCAL_HOSTS and not api_key:
        print(f"warning: serving on {args.host} without an API key", file=sys.stderr)
    print(f"serving {model_name} on http://{args.host}:{args.port}/ (chat page) and /v1/chat/completions", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def server_limits(args: argparse.Namespace):
    """The serve options as ServerLimits; ValueError names a bad one."""
    import ipaddress

    from crystalvlm.infer.limits import ServerLimits

    for name in ("max_tokens", "max_prompt_tokens", "max_request_mib", "max_image_mib", "max_image_pixels", "max_images",
                 "max_concurrent_requests", "max_pending_pixels", "remote_image_timeout", "batch_size", "body_timeout"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for network in args.remote_image_network:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"--remote-image-network {network!r} is not a network such as 10.1.0.0/16") from None
    return ServerLimits(
        max_request_bytes=int(args.max_request_mib * 2**20),
        body_timeout_s=args.body_timeout,
        max_image_bytes=int(args.max_image_mib * 2**20),
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        default_max_tokens=min(ServerLimits.default_max_tokens, args.max_tokens),
        max_concurrent_requests=args.max_concurrent_requests,
        max_pending=args.max_concurrent_requests,
        max_pending_pixels=args.max_pending_pixels,
        allow_remote_images=args.allow_remote_images,
        remote_image_timeout_s=args.remote_image_timeout,
        remote_image_networks=tuple(args.remote_image_network),
    )
